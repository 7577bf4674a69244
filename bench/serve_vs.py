"""bench/serve.py's ``vllm`` and ``fp32`` parts: ``adapterkit serve`` beside vLLM's CPU build.

``vllm``: in ``SERVE_BENCH_DTYPE`` (default bfloat16) on both sides, the cases base, one
adapter, K = 8 and K = 32 LoRA adapters round-robin, at concurrency 1, 8 and 32 (c=32
``SERVE_BENCH_REPEATS`` times, default 2, on fresh prompts each time, since vLLM caches
prefixes); the sides take turns per case and repeat, the one going first alternating. Then the
output check on the K = 8 servers, and the cases only adapterkit serves. ``fp32``: both sides
in float32 on K = 8 at c=32 and the output check, where exact agreement is expected.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_load import Req, run
from serve_setup import Server, adapterkit_server, n, requests
from serve_vllm import (
    BASE_ID,
    BIND,
    KV_GIB,
    NOT_SERVED,
    VLLM_PYTHON,
    alternate,
    check,
    extra_adapters,
    measure,
    pooled,
    vllm_argv,
    vllm_env,
)

DTYPE = os.environ.get("SERVE_BENCH_DTYPE", "bfloat16")
CONCURRENCY = tuple(int(c) for c in os.environ.get("SERVE_BENCH_CONCURRENCY", "1,8,32").split(","))
#: the side-by-side cases to run (all when unset), e.g. "one adapter,K=32"
CASES = [c for c in os.environ.get("SERVE_BENCH_CASES", "").split(",") if c]
COUNTS = {1: n(2), 8: n(8), 32: n(32)}
REPEATS = {1: 1, 8: 1, 32: int(os.environ.get("SERVE_BENCH_REPEATS", "2"))}
#: requests per case only adapterkit serves (at c=32; 0 skips them)
ONLY_OURS = n(int(os.environ.get("SERVE_BENCH_ONLY_OURS", "16")))
#: the case whose servers also run the output check (its vLLM server gets the check adapters)
CHECK_CASE = "one adapter"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cases(info: dict) -> dict[str, tuple[list[str], list[str]]]:
    """case: (the models its requests name in turn, the LoRA adapters of its vLLM server)."""
    lora = info["names"]["lora"]
    return {"one adapter": (lora[:1], lora[:1]), "K=32": (lora[:32], lora[:32]),
            "base": ([BASE_ID], []), "K=8": (lora[:8], lora[:8])}


def vllm_server(info: dict, root: Path, dtype: str, loras: list[str], more: list[str],
                label: str) -> Server:
    """vLLM with ``--max-loras len(loras)`` and ``loras + more`` registered (none: no LoRA)."""
    pairs = [(name, str(root / "peft" / name)) for name in loras + more]
    argv = vllm_argv(VLLM_PYTHON, info["model_dir"], dtype, pairs, len(loras) or None)
    return Server(argv, label, vllm_env())


def _ours(info: dict, root: Path, dtype: str, extra: dict) -> Server:
    return adapterkit_server(info, root, 32, ["--dtype", dtype], f"adapterkit-{dtype}",
                             more=extra["check"] + extra["prefix"])


def _warm(urls: dict[str, str], models: list[str]) -> None:
    """One short request per adapter on each side, so that no measured request pays a first
    load (adapterkit and vLLM both load adapters on first use)."""
    for url in urls.values():
        run(url, [Req(m, [100 + i, 200, 300, 400], 2) for i, m in enumerate(models)],
            concurrency=8)


def _check(info: dict, extra: dict, urls: dict[str, str]) -> dict[str, Any]:
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(info["model_dir"])
    prompts = [r.prompt for r in requests(info, [BASE_ID], 4, seed=21)]
    lora = info["names"]["lora"]
    pairs = [(BASE_ID, p) for p in prompts] + [(lora[0], prompts[i]) for i in range(2)]
    for i, name in enumerate(extra["check"]):
        pairs += [(name, prompts[i]), (name, prompts[(i + 1) % 4])]
    return check(urls["adapterkit"], urls["vllm"], pairs, lambda t: tok.decode([t]))


def _case(info: dict, urls: dict[str, str], case: str, models: list[str],
          first: int) -> list[dict]:
    _warm(urls, [m for m in models if m != BASE_ID] or [BASE_ID])
    rows = []
    for j, c in enumerate(CONCURRENCY):
        sets = [requests(info, models, COUNTS[c], seed=100 * c + rep) for rep in range(REPEATS[c])]
        rows += alternate(urls, case, f"c={c}", sets, c, first + j)
    return rows


def _only_ours(info: dict, extra: dict, url: str) -> list[dict]:
    """The cases vLLM cannot serve, at c=32 on adapterkit alone."""
    names = info["names"]
    lora = names["lora"]
    mixes = [{"adapters": [{"name": lora[0], "weight": 0.7}, {"name": lora[1], "weight": 0.3}]},
             {"adapters": [{"name": lora[2], "weight": 0.5}, {"name": lora[3], "weight": 0.5}]}]
    cases: dict[str, list[Req]] = {
        "IA3": requests(info, names["ia3"], ONLY_OURS, 41),
        "bottleneck": requests(info, names["bottleneck"], ONLY_OURS, 42),
        "prefix": requests(info, extra["prefix"], ONLY_OURS, 43),
        "composition": [r for i, mix in enumerate(mixes)
                        for r in requests(info, [BASE_ID], max(1, ONLY_OURS // 2), 44 + i,
                                          extra=mix)]}
    rows = []
    for case, reqs in cases.items():
        _warm({"adapterkit": url}, sorted({r.model for r in reqs}))
        rep = measure(url, reqs, 32)
        row = pooled("adapterkit", case, "c=32", [rep])
        row["vllm"] = NOT_SERVED[case]
        rows.append(row)
        print(f"adapterkit {case:12s} c=32   {row['output_throughput']:7.1f} tok/s", flush=True)
    return rows


def side_by_side(info: dict, root: Path, save: Callable[[dict], None] = lambda _: None,
                 dtype: str = DTYPE) -> dict[str, Any]:
    """The cases in turn (goal cases first), ``save`` called with the result so far after each,
    so that a run cut short keeps what it measured."""
    extra = extra_adapters(root)
    out: dict[str, Any] = {"dtype": dtype, "started": _now(), "rows": [], "startup_s": {},
                           "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": KV_GIB,
                                        "VLLM_CPU_OMP_THREADS_BIND": BIND}}
    ours = _ours(info, root, dtype, extra)
    out["startup_s"]["adapterkit"] = ours.startup_s
    try:
        chosen = {c: v for c, v in _cases(info).items() if not CASES or c in CASES}
        for i, (case, (models, loras)) in enumerate(chosen.items()):
            more = extra["check"] if case == CHECK_CASE else []
            vl = vllm_server(info, root, dtype, loras, more, f"vllm-{dtype}-{case}")
            out["startup_s"][f"vllm {case}"] = vl.startup_s
            try:
                urls = {"adapterkit": ours.url, "vllm": vl.url}
                out["rows"] += _case(info, urls, case, models, i)
                if case == CHECK_CASE:
                    out["check"] = _check(info, extra, urls)
                    print("output check", {k: v for k, v in out["check"].items() if k != "rows"})
            finally:
                vl.stop()
            out["finished"] = _now()
            save(out)
        if ONLY_OURS:
            out["rows"] += _only_ours(info, extra, ours.url)
    finally:
        ours.stop()
    out["finished"] = _now()
    return out


def fp32_part(info: dict, root: Path) -> dict[str, Any]:
    """Both sides in float32: K = 8 at c=32 (for the dtype choice) and the output check."""
    extra = extra_adapters(root)
    out: dict[str, Any] = {"dtype": "float32", "started": _now()}
    ours = _ours(info, root, "float32", extra)
    try:
        lora = info["names"]["lora"][:8]
        vl = vllm_server(info, root, "float32", lora, extra["check"], "vllm-float32-K=8")
        try:
            urls = {"adapterkit": ours.url, "vllm": vl.url}
            _warm(urls, lora + extra["check"])
            out["rows"] = alternate(urls, "K=8", "c=32",
                                    [requests(info, lora, COUNTS[32], seed=3200)], 32, 0)
            out["check"] = _check(info, extra, urls)
            print("output check fp32", {k: v for k, v in out["check"].items() if k != "rows"})
        finally:
            vl.stop()
    finally:
        ours.stop()
    out["finished"] = _now()
    return out
