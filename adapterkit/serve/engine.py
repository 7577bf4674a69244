"""The engine: one thread owns the model and runs iteration-level (continuous) batching.

Each step: control messages (new sequences, aborts, adapter attach/remove) are applied; aborted
and timed-out sequences leave; the scheduler admits waiting sequences; prompts are prefilled in
chunks under the per-step prefill-token budget (:mod:`.prefill`: one forward per group of equal
prompt length, a sequence with a prompt/prefix adapter alone), and a sequence whose prompt is done
gets its first token and a row; then one decode step runs for every running row, each row with
its own adapter through the kit's ``Route``, over the slot cache of :mod:`.kvcache`; finished rows
leave. Under the static policy no row decodes while a prompt of its batch is still prefilling.
Everything that touches the model or its adapter slots happens on this thread.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from ..compose.blocks import BASE
from ..kit import AdapterKit
from .adapters import AdapterCache
from .kvcache import SlotKV
from .prefill import Job, jobs_of, plan
from .protocol import ServeError
from .sampling import choose
from .scheduler import Scheduler, SchedulerConfig
from .selection import Entries
from .sequence import Sequence


class Engine:
    def __init__(self, model: Any, tokenizer: Any, config: SchedulerConfig, max_model_len: int,
                 budget_bytes: int | None = None, metrics: Any = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.kit = AdapterKit(model)
        self.config = config
        self.max_model_len = max_model_len
        self.metrics = metrics
        self.scheduler = Scheduler(config)
        self.entries = Entries()
        self.cache = AdapterCache(self.kit, budget_bytes, self.call, self._adapter_event)
        self.control: queue.SimpleQueue = queue.SimpleQueue()
        self.running: list[Sequence] = []  # in row order
        self.jobs: list[Job] = []  # admitted sequences whose prompts are being prefilled
        self.pending = 0  # submitted, not yet admitted (guarded by _lock)
        self._lock = threading.Lock()
        self._aborted: set[str] = set()
        self._broken: list[Sequence] = []  # waiting sequences whose adapter failed to reload
        self._stop = False
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="adapterkit-engine", daemon=True)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = model.config
        self.decoder = not getattr(cfg, "is_encoder_decoder", False) and hasattr(model, "generate") \
            and getattr(cfg, "model_type", "") not in ("bert", "roberta", "xlm-roberta")
        self.kv: SlotKV | None = None
        if self.decoder:
            heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            self.kv = SlotKV(cfg.num_hidden_layers, heads, dim, config.max_num_seqs, self.dtype,
                             self.device)
            names = {p.name for p in inspect.signature(model.forward).parameters.values()}
            self.cache_arg = "cache" if "cache" in names else "past_key_values"
        self.eos = _eos_ids(model, tokenizer)

    # -- any thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def shutdown(self) -> None:
        self._stop = True
        self.control.put(None)
        self.thread.join(timeout=30)
        self.cache.pool.shutdown(wait=False, cancel_futures=True)

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine thread between steps; a Future of its result."""
        future: Future = Future()
        if threading.current_thread() is self.thread:
            _run(fn, future)
        else:
            self.control.put((fn, future))
        return future

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue the sequences of one request; ServeError 429 when the queue is full."""
        with self._lock:
            if self.pending + len(seqs) > self.config.max_waiting:
                raise ServeError(429, f"the server's queue is full ({self.config.max_waiting} "
                                 "waiting requests, --max-waiting); retry later")
            self.pending += len(seqs)
        self.control.put((lambda: self._enqueue(seqs), None))

    def abort(self, request_id: str) -> None:
        self.control.put((lambda: self._aborted.add(request_id), None))

    def waiting_count(self) -> int:
        return self.pending

    # -- engine thread -------------------------------------------------------------------------
    def _adapter_event(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.adapter_event(kind)

    def _enqueue(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.cache.acquire(seq.selection.digests)
            seq.pinned = True
            self.scheduler.add(seq)

    def _drain(self, wait: float) -> None:
        """Apply the control messages; with nothing queued, wait up to ``wait`` seconds for one."""
        try:
            item = self.control.get(timeout=wait) if wait > 0 else self.control.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            fn, future = item
            if future is None:
                fn()
            else:
                _run(fn, future)
            try:
                item = self.control.get_nowait()
            except queue.Empty:
                return

    def _loop(self) -> None:
        while not self._stop:
            try:
                # idle, or only sequences that cannot start (cold adapters, the cap): sleep until
                # a control message (a load finishing, a new request) or a timeout check is due
                wait = 0.0 if self.running else 0.02 if self.scheduler.waiting else 0.5
                self._drain(wait)
                if self._stop:
                    break
                self._step()
            except Exception as exc:  # a step failed: its sequences fail, the engine goes on
                traceback.print_exc()
                for seq in list(self.running):
                    self._fail(seq, ServeError(500, f"the engine step failed: {exc}"))
                for seq in [s for job in self.jobs for s in job.seqs]:
                    self._fail(seq, ServeError(500, f"the engine step failed: {exc}"))
                if self.kv is not None:
                    self.kv.lengths.clear()
                self.running.clear()
                self.jobs.clear()

    def _ready(self, seq: Sequence) -> bool:
        if self.cache.ready(seq.selection.digests):
            return True
        why = self.cache.load_failed(seq.selection.digests)
        if why is not None:
            self._broken.append(seq)
        return False

    def _step(self) -> None:
        self._drop_aborted()
        for seq in self.scheduler.expired():
            self._leave_queue(seq)
            self._fail(seq, ServeError(503, f"the request waited more than "
                                       f"{self.config.queue_timeout:g} s for a slot "
                                       "(--queue-timeout)"))
        if not self.decoder:
            return
        new = self.scheduler.admit(self.running + self.prefilling(), self._ready)
        broken, self._broken = self._broken, []
        self.scheduler.remove(broken)
        for seq in broken:
            self._leave_queue(seq)
            why = self.cache.load_failed(seq.selection.digests) or "its adapter is gone"
            self._fail(seq, ServeError(500, f"the request's adapter could not be loaded: {why}"))
        for seq in new:
            self._leave_queue(seq)
            seq.admitted = time.perf_counter()
            seq.entries = self.entries.of(seq.selection)
        if new:
            self.jobs += jobs_of(new, self.model.config)
        if self.jobs:
            self._prefill()
        self._finish_rows()
        if self.running and not (self.config.policy == "static" and self.jobs):
            self._decode()
            self._finish_rows()
        self.steps += 1

    def _leave_queue(self, seq: Sequence) -> None:
        with self._lock:
            self.pending -= 1

    def _drop_aborted(self) -> None:
        if not self._aborted:
            return
        gone = self._aborted
        self._aborted = set()
        waiting = [s for s in self.scheduler.waiting if s.request_id in gone]
        self.scheduler.remove(waiting)
        for seq in waiting:
            self._leave_queue(seq)
            self._release(seq, "abort")
        for seq in self.running + self.prefilling():
            if seq.request_id in gone:
                seq.finished = "abort"
        for job in [j for j in self.jobs if all(s.finished is not None for s in j.seqs)]:
            self.jobs.remove(job)  # nobody waits for these prompts any more
            for seq in job.seqs:
                self._release(seq, "abort")
        self._finish_rows()

    # -- forwards -----------------------------------------------------------------------------
    def forward(self, entries: list, module: Any = None, **kwargs: Any) -> Any:
        """``module`` (default: the model) run with row i under ``entries[i]``."""
        with torch.inference_mode():
            if all(e == BASE for e in entries):
                self.kit.activate(None)
                return (module or self.model)(**kwargs)
            with self.kit.route(entries):
                return (module or self.model)(**kwargs)

    def prefilling(self) -> list[Sequence]:
        return [s for job in self.jobs for s in job.seqs]

    def _prefill(self) -> None:
        """One chunk for each job the step's prefill budget reaches; finished jobs' rows join."""
        assert self.kv is not None
        for job, chunk in plan(self.jobs, self.config.max_prefill_tokens):
            group = job.seqs
            ids = torch.tensor([s.prompt[job.done:job.done + chunk] for s in group],
                               device=self.device)
            out = self.forward([s.entries[0] for s in group], input_ids=ids, use_cache=True,
                                logits_to_keep=1, **{self.cache_arg: job.cache})
            job.cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) \
                or job.cache
            job.done += chunk
            if self.metrics is not None:
                self.metrics.prefill(chunk * len(group))
            if job.left > 0:
                continue
            self.jobs.remove(job)
            layers: list[Any] = list(job.cache.layers)
            for i, seq in enumerate(group):
                seq.row = self.kv.insert([(layer.keys[i], layer.values[i]) for layer in layers])
                self.running.append(seq)
            live = [i for i, s in enumerate(group) if s.finished is None]
            if live:
                self._take([group[i] for i in live], out.logits[live, -1])

    def _decode(self) -> None:
        assert self.kv is not None
        rows = self.running
        cache, mask, pos = self.kv.step()
        ids = torch.tensor([[s.output[-1]] for s in rows], device=self.device)
        out = self.forward([s.entries[1] for s in rows], input_ids=ids, attention_mask=mask,
                            position_ids=pos, use_cache=True, logits_to_keep=1,
                            **{self.cache_arg: cache})
        self.kv.advance()
        if self.metrics is not None:
            self.metrics.step(len(rows), len({d for s in rows for d in s.selection.digests}))
        self._take(rows, out.logits[:, -1])

    def _take(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        banned = [s.banned(self.eos) for s in seqs]
        choices = choose(logits, [s.params for s in seqs], [s.generator for s in seqs], banned)
        now = time.perf_counter()
        for seq, choice in zip(seqs, choices):
            if self.metrics is not None:
                if seq.first_token is None:
                    seq.first_token = now
                    self.metrics.first_token(seq)
                else:
                    self.metrics.inter_token(now - (seq.last_token or now))
            text = seq.take(choice, now, self.eos, self.max_model_len)
            if self.metrics is not None:  # counted before the client can see the token
                self.metrics.generation_tokens.inc()
                if seq.finished is not None:
                    self.metrics.finished(seq, seq.finished)
            seq.emit_token(choice, text)

    def _finish_rows(self) -> None:
        done = [s for s in self.running if s.finished is not None]
        if not done:
            return
        assert self.kv is not None
        for seq in sorted(done, key=lambda s: -s.row):  # highest rows first: moves stay valid
            moved = self.kv.remove(seq.row)
            last = self.running.pop()
            if moved is not None:
                self.running[seq.row] = last
                last.row = seq.row
            seq.row = -1
            self._release(seq, seq.finished or "abort")

    def _release(self, seq: Sequence, reason: str) -> None:
        if seq.pinned:
            self.cache.release(seq.selection.digests)
        seq.pinned = False

    def _fail(self, seq: Sequence, error: ServeError) -> None:
        seq.finished = "error"
        self._release(seq, "abort")
        seq.emit(error=error, finish_reason="error")


def _run(fn: Callable[[], Any], future: Future) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:  # handed to the caller
        future.set_exception(exc)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
