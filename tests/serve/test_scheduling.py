"""Scheduling: the cap on distinct adapters (a request over it waits, the rest go on, nothing
starves), the prefill budget, static batching, the bounded queue (429), queue timeouts, and a
disconnecting client freeing its row."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapterkit.serve import SchedulerConfig, ServerThread
from adapterkit.serve.sampling import SamplingParams
from adapterkit.serve.scheduler import Scheduler
from adapterkit.serve.selection import Item, Selection
from adapterkit.serve.sequence import Sequence

from .conftest import MODEL_ID, client_for, http, options


def _seq(adapter: str | None, prompt: int = 4) -> Sequence:
    from adapterkit.core.base import MethodKind

    items = (Item(adapter, 1.0, MethodKind.WEIGHT_DELTA, adapter),) if adapter else ()
    return Sequence("r", 0, [5] * prompt, SamplingParams(), Selection(items), lambda e: None,
                    text=None)  # type: ignore[arg-type]


def _admit(sched: Scheduler, running: list, ready: Any = lambda s: True) -> list:
    new = sched.admit(running, ready)
    running += new
    return new


def test_cap_waits_without_blocking_others_and_nothing_starves() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_active_adapters=2, patience=3))
    a1, b1, c1, a2, b2 = _seq("a"), _seq("b"), _seq("c"), _seq("a"), _seq("b")
    for s in (a1, b1, c1, a2, b2):
        sched.add(s)
    running: list = []
    assert _admit(sched, running) == [a1, b1, a2, b2]  # c would be a third adapter: it waits
    assert c1.skipped == 1
    late = [_seq("a") for _ in range(3)]
    for s in late:
        sched.add(s)
    assert _admit(sched, running) == late[:3]  # c waits (2 steps), the rest go on
    more = _seq("b")
    sched.add(more)
    assert _admit(sched, running) == []  # c has waited 3 steps: nobody jumps it any more
    running[:] = [s for s in running if s.selection.names != ["a"]]  # the a rows finish
    assert _admit(sched, running) == [c1, more]


def test_prefill_budget_loading_and_static() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_prefill_tokens=10))
    long, s1, s2, s3 = _seq(None, 30), _seq(None, 6), _seq(None, 4), _seq("x", 2)
    for s in (long, s1, s2, s3):
        sched.add(s)
    running: list = []
    assert _admit(sched, running) == [long]  # the first one goes whatever its length
    assert _admit(sched, running, ready=lambda s: s is not s1) == [s2, s3]  # s1's adapter loads
    assert _admit(sched, running) == [s1]
    static = Scheduler(SchedulerConfig(max_num_seqs=2, policy="static"))
    for s in (_seq(None), _seq(None), _seq(None)):
        static.add(s)
    batch: list = []
    assert len(_admit(static, batch)) == 2 and _admit(static, batch) == []
    assert len(_admit(static, [])) == 1
    with pytest.raises(ValueError, match="policy"):
        SchedulerConfig(policy="fifo")


def _metric(url: str, name: str, default: float | None = None, **labels: str) -> float:
    text = http(url + "/metrics")[1]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    if default is None:
        raise KeyError(name)
    return default


def _wait(predicate: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _held(dirs: dict, **scheduler: Any) -> tuple[ServerThread, threading.Event]:
    """A server whose ``lora`` is registered but not resident (the budget holds one adapter,
    ``ia3``), with its loader held until the returned event is set: requests for ``lora`` wait
    in the queue for as long as the test wants."""
    probe = ServerThread(options(dirs, ["lora"]))
    budget = next(iter(probe.state.engine.cache.resident.values())).nbytes
    probe.stop()
    opts = options(dirs, ["lora", "ia3"], **scheduler)
    opts.max_resident_bytes = budget
    srv = ServerThread(opts)
    cache = srv.state.engine.cache
    assert [r.method for r in cache.resident.values()] == ["ia3"]
    gate, original = threading.Event(), cache._load

    def held(*args: Any) -> Any:
        assert gate.wait(60)
        return original(*args)

    cache._load = held  # type: ignore[method-assign]
    return srv, gate


def _post(url: str, out: dict, model: str) -> threading.Thread:
    t = threading.Thread(target=lambda: out.update(r=http(url + "/v1/completions", "POST", {
        "model": model, "prompt": "w4", "max_tokens": 3, "ignore_eos": True})))
    t.start()
    return t


def test_disconnect_frees_the_row(dirs: dict) -> None:
    """One row: a stream is cut by its client while the engine is held mid-decode; the row is
    free at the next step (the request counts as aborted, not finished) and serves the next."""
    srv = ServerThread(options(dirs, ["lora"], max_num_seqs=1))
    try:
        client = client_for(srv.url)
        done_before = _metric(srv.url, "vllm:request_success_total", 0.0, finished_reason="length")
        stream = client.completions.create(model="lora", prompt="w1 w2", max_tokens=250,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        next(iter(stream))
        pause = threading.Event()
        srv.state.engine.call(lambda: pause.wait(60))  # the engine stops between two steps
        assert _metric(srv.url, "vllm:num_requests_running") == 1
        stream.response.close()  # the client goes away mid-stream
        time.sleep(0.2)  # the server's stream notices before the engine goes on
        pause.set()
        _wait(lambda: _metric(srv.url, "vllm:num_requests_running") == 0)
        assert _metric(srv.url, "vllm:request_success_total", 0.0, finished_reason="length") == \
            done_before  # aborted at the next step, not run to its 250 tokens
        r = client.completions.create(model=MODEL_ID, prompt="w3", max_tokens=4,
                                      extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 4  # the freed row serves the next request
    finally:
        srv.stop()


def test_full_queue_answers_429(dirs: dict) -> None:
    srv, gate = _held(dirs, max_waiting=1)
    try:
        waiting: dict = {}
        t = _post(srv.url, waiting, "lora")  # waits for its adapter
        _wait(lambda: _metric(srv.url, "vllm:num_requests_waiting") == 1)
        client = client_for(srv.url)
        with pytest.raises(openai.RateLimitError) as exc:
            client.completions.create(model="ia3", prompt="w5", max_tokens=2)
        assert exc.value.status_code == 429 and "queue is full" in str(exc.value)
        gate.set()
        t.join(timeout=60)
        assert waiting["r"][0] == 200  # served once its adapter arrived
        assert client.completions.create(model="ia3", prompt="w5", max_tokens=2).choices
    finally:
        gate.set()
        srv.stop()


def test_queue_timeout(dirs: dict) -> None:
    srv, gate = _held(dirs, queue_timeout=0.2)
    try:
        out: dict = {}
        _post(srv.url, out, "lora").join(timeout=60)
        status, text = out["r"]
        assert status == 503 and "--queue-timeout" in text
        assert http(srv.url + "/v1/completions", "POST", {  # the others are served meanwhile
            "model": "ia3", "prompt": "w4", "max_tokens": 2})[0] == 200
    finally:
        gate.set()
        srv.stop()


def test_cap_over_http_keeps_one_adapter_per_step(dirs: dict, reference: Any) -> None:
    srv = ServerThread(options(dirs, ["lora", "ia3", "prefix"], max_num_seqs=4,
                               max_active_adapters=1))
    try:
        client = client_for(srv.url)
        out: dict = {}

        def go(name: str) -> None:
            out[name] = client.completions.create(
                model=name, prompt="w7 w8", max_tokens=10, temperature=0, logprobs=0,
                extra_body={"ignore_eos": True}).choices[0].logprobs.tokens

        threads = [threading.Thread(target=go, args=(n,)) for n in ("lora", "ia3", "prefix")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for name in ("lora", "ia3", "prefix"):
            assert out[name] == reference.tokens(name, "w7 w8", 10)
        steps = _metric(srv.url, "adapterkit:distinct_adapters_per_step_count")
        one = _metric(srv.url, "adapterkit:distinct_adapters_per_step_bucket", le="1.0")
        assert steps > 0 and one == steps
    finally:
        srv.stop()
