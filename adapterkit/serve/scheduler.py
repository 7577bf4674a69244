"""Which waiting sequences join the running batch at each engine step.

- Oldest first: waiting sequences are considered in arrival order.
- A step admits sequences while free rows remain (``max_num_seqs``) and their prompt tokens fit
  the per-step prefill budget (``max_prefill_tokens``; the first one is admitted whatever its
  length). The engine prefills at most that many prompt tokens per step, in chunks
  (:mod:`.prefill`), so a long prompt takes several steps while the running rows decode.
- A sequence whose adapters would bring the batch's distinct adapters past
  ``max_active_adapters`` waits, and the ones behind it are still considered. Each step it waits
  so counts; once it has waited ``patience`` steps, nothing behind it is admitted until it is,
  so the batch drains down to room for its adapters: no adapter starves.
- A sequence whose adapter is still loading waits without holding up anyone.
- ``static`` scheduling (the baseline) admits a new batch only when the running one is empty,
  and then fills every free row at once (a fixed batch; the prefill budget only sets how many
  steps its prefill takes, and none of its rows decodes before all are prefilled).
- The waiting queue is bounded (``max_waiting``: the server answers 429 beyond it), and a
  sequence waiting longer than ``queue_timeout`` seconds is answered with an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .sequence import Sequence


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 32
    max_prefill_tokens: int = 512
    max_active_adapters: int = 32
    max_waiting: int = 1024
    queue_timeout: float | None = None
    policy: str = "continuous"  # or "static"
    patience: int = 8

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_prefill_tokens", "max_active_adapters", "max_waiting"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.policy not in ("continuous", "static"):
            raise ValueError(f"scheduler policy {self.policy!r}: use 'continuous' or 'static'")


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.waiting: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        self.waiting = [s for s in self.waiting if id(s) not in gone]

    def admit(self, running: list[Sequence], ready: Callable[[Sequence], bool]) -> list[Sequence]:
        cfg = self.config
        if cfg.policy == "static" and running:
            return []
        active = {d for s in running for d in s.selection.digests}
        free = cfg.max_num_seqs - len(running)
        budget = cfg.max_prefill_tokens
        chosen: list[Sequence] = []
        for seq in self.waiting:
            if free <= 0:
                break
            if not ready(seq):
                continue
            new = set(seq.selection.digests) - active
            if len(active) + len(new) > cfg.max_active_adapters:
                seq.skipped += 1
                if seq.skipped >= cfg.patience:
                    break  # it starves otherwise: the batch drains until it fits
                continue
            cost = len(seq.prompt)
            if chosen and cost > budget and cfg.policy != "static":
                break
            chosen.append(seq)
            budget -= cost
            free -= 1
            active |= new
        self.remove(chosen)
        return chosen

    def expired(self) -> list[Sequence]:
        """Sequences that waited longer than ``queue_timeout``, removed from the queue."""
        limit = self.config.queue_timeout
        if limit is None:
            return []
        now = time.perf_counter()
        late = [s for s in self.waiting if now - s.arrival > limit]
        self.remove(late)
        return late

    def adapters(self) -> list[str]:
        """The served names of the adapters of waiting sequences."""
        return sorted({n for s in self.waiting for n in s.selection.names})
