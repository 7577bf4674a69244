"""Shared benchmark plumbing: pinned threads, interleaved rounds, medians, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def pin_threads(n: int | None = None) -> int:
    n = n or int(os.environ.get("BENCH_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


Case = Callable[[], Any] | tuple[Callable[[], Any], Callable[[], Any]]


def interleaved(cases: dict[str, Case], rounds: int, warmup: int = 2,
                inner: int = 1) -> dict[str, float]:
    """Median seconds per call of each case; every round runs each case once, in rotated order
    so that no case always follows the same neighbour. A case is a callable, or a pair
    (setup, call) whose untimed setup runs before each timed call."""
    names = list(cases)
    split = {n: c if isinstance(c, tuple) else (None, c) for n, c in cases.items()}
    for _ in range(warmup):
        for n in names:
            setup, call = split[n]
            if setup:
                setup()
            call()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            setup, call = split[n]
            if setup:
                setup()
            start = time.perf_counter()
            for _ in range(inner):
                call()
            times[n].append((time.perf_counter() - start) / inner)
    return {n: statistics.median(v) for n, v in times.items()}


def make_step(model: torch.nn.Module, params: list[torch.nn.Parameter],
              batch: dict[str, torch.Tensor], labels: torch.Tensor) -> Callable[[], None]:
    """One AdamW training step of ``model`` on ``batch`` per call (the suite's training case,
    shared by every library's side)."""
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        loss = model(**batch, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def rss_mib() -> float:
    """Resident memory of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_growth(step: Callable[[], Any], calls: int = 5) -> float:
    """Peak growth of resident memory (MiB, sampled every 2 ms) over ``calls`` calls of
    ``step``, from the resident memory before the first."""
    import threading

    start, peak, done = rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            done.wait(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(calls):
        step()
    done.set()
    sampler.join()
    return peak[0] - start


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads()}


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
