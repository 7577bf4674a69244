"""The multi-task table of docs/composition.md, rendered from bench/multitask.py's results, with
each goal judged on the numbers."""

from __future__ import annotations

import statistics
from typing import Any

from multitask_data import TASKS, Budget

BEGIN, END = "<!-- multitask:begin -->", "<!-- multitask:end -->"
NAMES = {"sst2": "SST-2 acc", "rte": "RTE acc", "mrpc": "MRPC acc/F1", "stsb": "STS-B P/S"}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def means(runs: dict[int, dict[str, Any]]) -> list[float]:
    """The mean over tasks of each seed's run."""
    return [sum(r["scores"][t]["score"] for t in TASKS) / len(TASKS) for r in runs.values()]


def _row(label: str, runs: dict[int, dict[str, Any]]) -> str:
    cells = [_mean_std([r["scores"][t]["score"] for r in runs.values()]) for t in TASKS]
    params = next(iter(runs.values()))["params"]
    minutes = statistics.mean(r["train_seconds"] for r in runs.values()) / 60
    return (f"| {label} | " + " | ".join(cells) + f" | **{_mean_std(means(runs))}** | "
            f"{params:,} | {len(runs)} | {minutes:.1f} |")


def _pair(results: dict[str, dict[int, dict[str, Any]]], key: str,
          ref: str) -> tuple[float, float, int] | None:
    """(mean of ``key``, mean of ``ref``, seeds) over the seeds both rows have."""
    a, b = results.get(key, {}), results.get(ref, {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return (statistics.mean(means({s: a[s] for s in seeds})),
            statistics.mean(means({s: b[s] for s in seeds})), len(seeds))


def goals(results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """One line per goal of the issue, judged on the means over the seeds both rows have."""
    lines: list[str] = []
    if "single" not in results:
        return ["No single-task rows yet: no goal can be judged."]
    single_params = next(iter(results["single"].values()))["params"]
    for key, what in (("mixture_sequence", "sequence router"), ("mixture_token", "token router")):
        pair = _pair(results, key, "single")
        if pair is not None:
            got, single, n = pair
            gap = single - got
            verdict = "met" if gap <= 1.0 else f"missed by {gap - 1.0:.1f} points"
            lines.append(f"- Router-trained Mixture ({what}) within 1 point of the single-task "
                         f"LoRAs on the mean, no task id: {got:.1f} vs {single:.1f} "
                         f"({-gap:+.1f}, {_seeds(n)}): **{verdict}**.")
    pair = _pair(results, "arrow", "average")
    if pair is not None:
        arrow, average, n = pair
        verdict = "met" if arrow > average else f"missed by {average - arrow:.1f} points"
        lines.append(f"- Arrow beats the uniform Average on the mean: {arrow:.1f} vs "
                     f"{average:.1f} ({_seeds(n)}): **{verdict}**.")
    for key, what in (("poly", "Poly/MHR"), ("hyper", "HyperAdapter")):
        pair = _pair(results, key, "single")
        if pair is None:
            continue
        got, single, n = pair
        params = next(iter(results[key].values()))["params"]
        fewer = params < single_params
        close = single - got <= 1.0
        verdict = ("met" if close and fewer else
                   "missed: " + ", ".join(w for w, bad in (
                       (f"{single - got - 1.0:.1f} points beyond the 1-point match", not close),
                       ("not fewer parameters", not fewer)) if bad))
        lines.append(f"- {what} matches the single-task LoRAs on the mean (within 1 point) with "
                     f"fewer parameters: {got:.1f} vs {single:.1f} ({_seeds(n)}), {params:,} vs "
                     f"{single_params:,} parameters: **{verdict}**.")
    return lines


def _missing(results: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str],
             command: str) -> list[str]:
    """A line naming the rows without results (the run stopped before them), if any."""
    names = [labels[k] for k in labels if k not in results]
    if not names:
        return []
    return ["", "Not run yet at this budget (the run stopped before them; the same command "
            "resumes from its cache and adds them): " + "; ".join(names) + "."]


def _seeds(n: int) -> str:
    return "one seed" if n == 1 else f"mean of {n} seeds"


def render(text: str, results: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str],
           budget: Budget, threads: int, sizes: dict[str, int],
           dev_limit: int | None = None) -> str:
    head = ("| row | " + " | ".join(NAMES[t] for t in TASKS)
            + " | mean | adapter params | seeds | train min |")
    rows = [head, "|---" * (len(TASKS) + 5) + "|"]
    rows += [_row(labels[k], runs) for k, runs in results.items()]
    dev = ", ".join(f"{NAMES[t].split()[0]} {sizes[t]:,}" for t in TASKS)
    if dev_limit is not None:
        dev = f"the first {dev_limit:,} examples of each, in file order: {dev}"
    env = ([f"MT_STEPS={budget.steps_per_task}"]
           if budget.steps_per_task != Budget.steps_per_task else [])
    env += [f"MT_DEV_LIMIT={dev_limit}"] if dev_limit is not None else []
    env = [f"BENCH_THREADS={threads}", *env] if threads != 2 else env
    command = " ".join([*env, "python bench/multitask.py"])
    body = "\n".join([
        f"MiniLM (all-MiniLM-L6-v2), GLUE dev sets ({dev} examples). Budget for every row: "
        f"single-task runs {budget.steps_per_task} steps of "
        f"batch {budget.batch} per task; multi-task runs {budget.mixed_steps} steps of batch "
        f"{budget.batch} with {budget.batch // len(TASKS)} examples of each task (the same "
        f"examples per task); max length {budget.max_length}; AdamW, lr {budget.lr} "
        f"({budget.fusion_lr} for the fusion layer, {budget.hyper_lr} for the hypernetwork, "
        f"Hyperformer's), warmup 6% and cosine decay; {threads} CPU "
        "threads. A task's score is the mean of its GLUE metrics x 100 (MRPC accuracy and F1, "
        "STS-B Pearson and Spearman; STS-B trains on standardised scores, squared error); "
        "cells are mean ± standard deviation over the seeds. "
        "Heads: one linear layer per task on the mean-pooled states, trained with each "
        "single-task LoRA and kept frozen in the rows over those LoRAs; trained afresh with the "
        "adapters in the joint Mixture, Poly and HyperAdapter rows. No row gets a task id "
        "at inference except Poly and HyperAdapter (each example's task, through `kit.tasks`); "
        "every row uses its task's head. Adapter parameters exclude the heads; train min is "
        "the wall time of training on a shared machine (so it follows that machine's load). "
        "Made by "
        f"`{command}`; results also in bench/results/multitask.json.",
        "", *rows, *_missing(results, labels, command), "", "Goals, judged on these means:", "",
        *goals(results)])
    start, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{start}{BEGIN}\n{body}\n{END}{tail}"
