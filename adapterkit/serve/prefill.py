"""Chunked prefill: prompts are prefilled over as many engine steps as the per-step prefill-token
budget needs, so the running rows keep decoding while a long prompt (or many prompts at once)
joins.

Sequences admitted in one step with equal prompt lengths form one :class:`Job` (a sequence with a
prompt or prefix adapter forms its own, and is prefilled whole: its virtual tokens sit at the
start of the cache). Each step, jobs are served oldest first: a job of ``n`` rows gets a chunk of
``budget // n`` more prompt tokens per row (the first job of a step at least one token), run as
one forward over the job's own transformers ``DynamicCache``; a job whose prompts are done hands
its rows' caches to the slot cache and its rows start decoding. Chunking changes only how the
prompt's positions are grouped into forwards, not what they attend to, so greedy outputs equal
unchunked prefill (``tests/serve/test_chunked_prefill.py``).
"""

from __future__ import annotations

from typing import Any

from .sequence import Sequence


class Job:
    """Rows prefilled together: equal prompt lengths, one cache, ``done`` tokens prefilled."""

    def __init__(self, seqs: list[Sequence], config: Any) -> None:
        from transformers import DynamicCache

        self.seqs = seqs
        self.length = len(seqs[0].prompt)
        self.whole = seqs[0].selection.has_input  # a prompt/prefix adapter: no chunks
        self.cache = DynamicCache(config=config)
        self.done = 0

    @property
    def left(self) -> int:
        return self.length - self.done


def jobs_of(seqs: list[Sequence], config: Any) -> list[Job]:
    """The jobs of the sequences admitted in one step, in admission order."""
    groups: dict[Any, list[Sequence]] = {}
    for seq in seqs:
        key = ("alone", id(seq)) if seq.selection.has_input else len(seq.prompt)
        groups.setdefault(key, []).append(seq)
    return [Job(group, config) for group in groups.values()]


def plan(jobs: list[Job], budget: int) -> list[tuple[Job, int]]:
    """(job, tokens per row) for this step: oldest first, while the budget lasts; the first job
    always moves."""
    chosen: list[tuple[Job, int]] = []
    for job in jobs:
        rows = len(job.seqs)
        if job.whole:
            chunk = job.left if (not chosen or job.left * rows <= budget) else 0
        else:
            chunk = min(job.left, budget // rows if chosen else max(1, budget // rows))
        if chunk <= 0:
            break
        chosen.append((job, chunk))
        budget -= chunk * rows
        if budget <= 0:
            break
    return chosen
