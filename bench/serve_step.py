"""Per-step cost of the serving engine on SmolLM2, without HTTP: milliseconds per decode step at
batch 1, 8 and 32 (rows with 128-token prompts), for the base model, one LoRA adapter for every
row, and 8 or 32 distinct LoRA adapters round-robin (r=8 on q and v).

    python bench/serve_step.py                        # this tree
    python bench/serve_step.py --against HEAD~3       # interleaved: a worktree of HEAD~3 and this
    python bench/serve_step.py --profile 32 --case k32   # torch.profiler table of decode steps
    python bench/serve_step.py --prefill              # also: ms of one 128-token prefill per batch
    python bench/serve_step.py --register             # also: seconds to register the adapters
    python bench/serve_step.py --omp unset,PASSIVE    # each tree with and without OMP_WAIT_POLICY

Each measurement runs in a fresh process (``SERVE_BENCH_THREADS`` torch threads, default 2);
with ``--against`` the two trees alternate round by round, so shared load hits both. Results go
to ``bench/results/serve_step.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
THREADS = int(os.environ.get("SERVE_BENCH_THREADS", "2"))
PROMPT = 128
CASES = ("base", "lora1", "k8", "k32")
COUNT = {"lora1": 1, "k8": 8, "k32": 32}


def adapters(root: Path, count: int = 32) -> list[Path]:
    """``count`` random LoRA adapters (r=8 on q and v) for SmolLM2, made once under ``root``."""
    import torch
    import transformers as T

    import adapterkit as ak
    from adapterkit.train.smollm2 import smollm2_dir

    dirs = [root / f"l{i:03d}" for i in range(count)]
    if all(d.is_dir() and any(d.glob("*.json")) for d in dirs):
        return dirs
    model = T.AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    kit = ak.AdapterKit(model)
    g = torch.Generator().manual_seed(0)
    for d in dirs:
        kit.add(d.name, ak.LoRA(r=8, targets=("attn.q", "attn.v")))
        with torch.no_grad():
            for p in kit.parameters(d.name):
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        kit.save(d.name, d)
        kit.remove(d.name)
    return dirs


def engine_for(case: str, dtype: str, root: Path) -> Any:
    """An Engine on SmolLM2 driven from this thread (no engine thread), with the case's adapters
    registered; returns (engine, adapter names)."""
    import torch

    from adapterkit.serve.engine import Engine
    from adapterkit.serve.scheduler import SchedulerConfig
    from adapterkit.serve.server import load_model

    torch.set_num_threads(THREADS)
    model, tok, _ = load_model("smollm2", dtype=dtype)
    engine = Engine(model, tok, SchedulerConfig(max_num_seqs=32, max_prefill_tokens=1 << 20), 8192)
    engine.thread = threading.current_thread()  # engine calls run inline, here
    names = []
    start = time.perf_counter()
    if case != "base":
        for d in adapters(root)[: COUNT[case]]:
            engine.cache.register(d.name, d)
            names.append(d.name)
    engine.register_s = time.perf_counter() - start  # what start-up spends on the adapters
    return engine, names


def fill(engine: Any, names: list[str], batch: int, seed: int = 0) -> float:
    """Admit and prefill ``batch`` rows (random 128-token prompts, long outputs); the seconds
    the prefill step took."""
    import random

    from adapterkit.serve.sampling import SamplingParams
    from adapterkit.serve.selection import select
    from adapterkit.serve.sequence import Sequence
    from adapterkit.serve.text import TextState

    rng = random.Random(seed)
    vocab = engine.model.config.vocab_size
    seqs = []
    for i in range(batch):
        model = names[i % len(names)] if names else "smollm2"
        sel = select(engine.cache, {"smollm2"}, model, None, None)
        prompt = [rng.randrange(100, vocab - 100) for _ in range(PROMPT)]
        seqs.append(Sequence(f"r{i}", 0, prompt, SamplingParams(
            max_tokens=4096, temperature=0, ignore_eos=True), sel, lambda ev: None,
            TextState(engine.tokenizer, [])))
    engine._enqueue(seqs)
    engine.pending += len(seqs)
    start = time.perf_counter()
    while engine.scheduler.waiting:
        engine._step()
    return time.perf_counter() - start


def clear(engine: Any) -> None:
    for seq in list(engine.running):
        seq.finished = "abort"
    engine._finish_rows()


def worker(case: str, dtype: str, batches: list[int], steps: int, prefill: bool,
           register: bool = False) -> dict:
    root = Path(os.environ.get("SERVE_STEP_DIR", Path(tempfile.gettempdir()) / "adapterkit-serve-step"))
    root.mkdir(parents=True, exist_ok=True)
    engine, names = engine_for(case, dtype, root)
    out: dict[str, Any] = {}
    fill(engine, names, 2)  # warm-up
    for _ in range(2):
        engine._decode()
    clear(engine)
    for b in batches:
        took = fill(engine, names, b, seed=b)
        for _ in range(2):
            engine._decode()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            engine._decode()
            times.append(time.perf_counter() - start)
        out[str(b)] = {"decode_ms": 1000 * statistics.median(times)}
        if prefill:
            out[str(b)]["prefill_ms"] = 1000 * took
        if register:
            out[str(b)]["register_s"] = engine.register_s
        clear(engine)
    return out


def profile(case: str, dtype: str, batch: int, steps: int) -> None:
    import torch.profiler as tp

    root = Path(tempfile.gettempdir()) / "adapterkit-serve-step"
    root.mkdir(parents=True, exist_ok=True)
    engine, names = engine_for(case, dtype, root)
    fill(engine, names, batch)
    for _ in range(2):
        engine._decode()
    with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine._decode()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def _run_worker(tree: Path, args: argparse.Namespace, case: str, dtype: str,
                omp: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(tree)}
    if omp is not None:  # "unset": without the variable
        env.pop("OMP_WAIT_POLICY", None)
        env.update({} if omp == "unset" else {"OMP_WAIT_POLICY": omp})
    argv = [sys.executable, str(HERE / "serve_step.py"), "--worker", "--case", case, "--dtype",
            dtype, "--batches", args.batches, "--steps", str(args.steps)]
    argv += [f"--{k}" for k in ("prefill", "register") if getattr(args, k)]
    proc = subprocess.run(argv, env=env, check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worktree(rev: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"adapterkit-step-{rev.replace('/', '_').replace('~', '_')}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], check=True,
                       cwd=HERE.parent, capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--case", default="all", help="base, lora1, k8, k32 or all")
    ap.add_argument("--dtype", default="float32", help="comma-separated dtypes")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--against", help="a git revision measured interleaved with this tree")
    ap.add_argument("--profile", type=int, help="profile decode steps at this batch")
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--register", action="store_true")
    ap.add_argument("--omp", help="comma-separated OMP_WAIT_POLICY values per tree ('unset': none)")
    ap.add_argument("--out", default="serve_step")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        print(json.dumps(worker(args.case, args.dtype, batches, args.steps, args.prefill,
                                args.register)))
        return
    if args.profile:
        profile(args.case if args.case != "all" else "k32", args.dtype, args.profile, args.steps)
        return
    trees: dict[str, tuple[Path, str | None]] = {"this": (HERE.parent, None)}
    if args.against:
        trees = {args.against: (_worktree(args.against), None), "this": (HERE.parent, None)}
    if args.omp:
        trees = {f"{t} omp={p}": (path, p) for t, (path, _) in trees.items()
                 for p in args.omp.split(",")}
    cases = CASES if args.case == "all" else tuple(args.case.split(","))
    dtypes = args.dtype.split(",")
    sides = [(t, c, d) for c in cases for d in dtypes for t in trees]
    results: dict[str, list[dict]] = {"|".join(s): [] for s in sides}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)] if r % 2 == 0 else sides[::-1]
        for tree, case, dtype in order:
            path, omp = trees[tree]
            got = _run_worker(path, args, case, dtype, omp)
            results[f"{tree}|{case}|{dtype}"].append(got)
            print(tree, case, dtype, json.dumps(got), f"load {os.getloadavg()[0]:.2f}", flush=True)
        load.append(os.getloadavg()[0])
    write(results, batches, load, args)


def write(results: dict[str, list[dict]], batches: list[int], load: list[float],
          args: argparse.Namespace) -> None:
    OUT.mkdir(exist_ok=True)
    keys = ["decode_ms"] + (["prefill_ms"] if args.prefill else []) + (
        ["register_s"] if args.register else [])
    table = {side: {str(b): {k: statistics.median(r[str(b)][k] for r in runs) for k in keys}
                    for b in batches} for side, runs in results.items()}
    doc = {"command": " ".join(["python", "bench/serve_step.py", *sys.argv[1:]]), "threads": THREADS,
           "load_avg": load, "rounds": args.rounds, "steps": args.steps, "median_ms": table,
           "runs": results}
    (OUT / f"{args.out}.json").write_text(json.dumps(doc, indent=1))
    head = "| tree | case | dtype | " + " | ".join(f"b={b} decode ms" for b in batches)
    if args.prefill:
        head += " | " + " | ".join(f"b={b} prefill ms" for b in batches)
    if args.register:
        head += " | register s"
    lines = [f"`{doc['command']}`, {THREADS} threads, load average {', '.join(f'{x:.1f}' for x in load)} "
             "(start, after each round); medians over rounds of the per-process median step.", "",
             head + " |", "|" + "---|" * (3 + len(batches) * (1 + args.prefill) + args.register)]
    for side, row in table.items():
        cells = [f"{row[str(b)]['decode_ms']:.1f}" for b in batches]
        if args.prefill:
            cells += [f"{row[str(b)]['prefill_ms']:.0f}" for b in batches]
        if args.register:
            cells.append(f"{row[str(batches[0])]['register_s']:.2f}")
        lines.append("| " + " | ".join(side.split("|")) + " | " + " | ".join(cells) + " |")
    (OUT / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
