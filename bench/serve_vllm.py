"""The vLLM side of bench/serve.py: vLLM's CPU build (``make vllm-venv``, ``.venv-vllm``) beside
``adapterkit serve``, on the same SmolLM2 directory (``adapterkit.train.smollm2.smollm2_dir()``)
and the same LoRA adapters, exported in PEFT format, with the same dtype on both sides.

Both servers are driven by the load client of ``bench/serve_load.py`` with the same requests in
the same order; per case the two take turns (which one goes first alternates), at concurrency
1, 8 and 32. vLLM gets one server per case: the base model on a server without
``--enable-lora`` (vLLM's fair base), and ``--max-loras K`` for K adapters. adapterkit keeps one
server with every adapter. Cases vLLM cannot serve (IA3, bottleneck, prefix, weighted
compositions) run on adapterkit alone. ``check`` sends greedy requests one at a time to both
servers and compares the tokens (vLLM's ``return_tokens_as_token_ids`` against adapterkit's
tokens, decoded one by one with the same tokenizer).

Environment: ``VLLM_PYTHON`` (default ``.venv-vllm/bin/python``), ``SERVE_BENCH_DTYPE``
(``bfloat16``), ``SERVE_BENCH_VLLM_KV_GIB`` (``VLLM_CPU_KVCACHE_SPACE``, default 1) and
``SERVE_BENCH_VLLM_BIND`` (``VLLM_CPU_OMP_THREADS_BIND``, default vLLM's ``auto``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_load import Req, run, summarize

HERE = Path(__file__).resolve().parent
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", HERE.parent / ".venv-vllm" / "bin" / "python"))
KV_GIB = os.environ.get("SERVE_BENCH_VLLM_KV_GIB", "1")
BIND = os.environ.get("SERVE_BENCH_VLLM_BIND", "auto")
BASE_ID = "smollm2"
#: why vLLM has no row for the cases only adapterkit serves
NOT_SERVED = {"IA3": "vLLM serves LoRA only", "bottleneck": "vLLM serves LoRA only",
              "prefix": "vLLM serves LoRA only (prompt adapters were removed)",
              "composition": "vLLM serves one LoRA per request at full weight"}


def vllm_argv(python: str | Path, model_dir: str | Path, dtype: str,
              loras: list[tuple[str, str]], max_loras: int | None = None, max_rank: int = 8,
              max_model_len: int = 2048, max_num_seqs: int = 32) -> list[str]:
    """vLLM's OpenAI server command line (the port is appended by the caller). ``loras`` empty:
    a server without ``--enable-lora``; else ``--max-loras`` (default: all of them) in a batch
    and every adapter registered on the CPU side."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype {dtype!r}: use float32, bfloat16 or float16")
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", BASE_ID, "--dtype", dtype, "--max-model-len",
            str(max_model_len), "--max-num-seqs", str(max_num_seqs), "--host", "127.0.0.1"]
    if not loras:
        if max_loras:
            raise ValueError("max_loras without adapters: a base server has no LoRA slots")
        return argv
    k = max_loras or len(loras)
    if not 1 <= k <= len(loras):
        raise ValueError(f"max_loras {k}: between 1 and the {len(loras)} adapters given")
    names = [name for name, _ in loras]
    if len(set(names)) != len(names) or BASE_ID in names:
        raise ValueError(f"adapter names must be distinct and not {BASE_ID!r}: {names}")
    return [*argv, "--enable-lora", "--max-loras", str(k), "--max-lora-rank", str(max_rank),
            "--max-cpu-loras", str(len(loras)), "--lora-modules",
            *(f"{name}={path}" for name, path in loras)]


def vllm_env() -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": KV_GIB, "VLLM_CPU_OMP_THREADS_BIND": BIND,
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1"}


def extra_adapters(root: Path) -> dict[str, list[str]]:
    """Adapters the side-by-side adds to ``prepare``'s: four LoRA adapters with larger weights
    (``x*``, whose greedy outputs differ from the base model's, for the output check) and one
    prefix adapter (``p0``), in adapterkit's format and the LoRA ones in PEFT's too."""
    stamp = root / "extra.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())
    import torch
    import transformers as T

    import adapterkit as ak
    from adapterkit.train.smollm2 import smollm2_dir

    model = T.AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    kit = ak.AdapterKit(model)
    g = torch.Generator().manual_seed(1)
    names: dict[str, list[str]] = {"check": [f"x{i}" for i in range(4)], "prefix": ["p0"]}
    for name in names["check"] + names["prefix"]:
        kit.add(name, ak.LoRA(r=8, targets=("attn.q", "attn.v")) if name[0] == "x"
                else ak.PrefixTuning(num_tokens=16))
        with torch.no_grad():
            for p in kit.parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * (0.05 if name[0] == "x" else 0.5))
        kit.save(name, root / name)
        if name[0] == "x":
            kit.save(name, root / "peft" / name, format="peft")
        kit.remove(name)
    stamp.write_text(json.dumps(names))
    return names


def measure(url: str, reqs: list[Req], concurrency: int) -> tuple[list, float, float]:
    """(results, duration, 1-minute load average just before)."""
    load = os.getloadavg()[0]
    results, duration = run(url, reqs, concurrency=concurrency)
    return results, duration, load


def pooled(side: str, case: str, arrival: str,
           reps: list[tuple[list, float, float]]) -> dict[str, Any]:
    """One row over the repeats of a case: all their requests, their durations summed."""
    results = [r for rep in reps for r in rep[0]]
    row = {"side": side, "case": case, "arrival": arrival,
           **summarize(results, sum(rep[1] for rep in reps))}
    row["load_avg_before"] = [rep[2] for rep in reps]
    row["rep_output_throughput"] = [summarize(rep[0], rep[1])["output_throughput"] for rep in reps]
    return row


def alternate(urls: dict[str, str], case: str, arrival: str, sets: list[list[Req]],
              concurrency: int, first: int) -> list[dict[str, Any]]:
    """Each side runs each set of requests (one set per repeat), the sides taking turns
    (``first`` picks who starts, and the order flips with each repeat); a pooled row per side."""
    sides = list(urls)
    reps: dict[str, list] = {s: [] for s in sides}
    for rep, reqs in enumerate(sets):
        order = sides if (first + rep) % 2 == 0 else sides[::-1]
        for side in order:
            reps[side].append(measure(urls[side], reqs, concurrency))
            r = summarize(*reps[side][-1][:2])
            print(f"{side:10s} {case:12s} {arrival:6s} rep {rep} load {reps[side][-1][2]:5.1f} "
                  f"{r['output_throughput']:7.1f} tok/s ttft p99 {r['ttft_ms']['p99'] or 0:8.0f}"
                  f" ms failed {r['failed']}", flush=True)
    return [pooled(s, case, arrival, reps[s]) for s in sides]


def _complete(url: str, model: str, prompt: list[int], tokens: int, vllm: bool) -> dict:
    import urllib.request

    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "logprobs": 0, "ignore_eos": True}
    if vllm:
        body["return_tokens_as_token_ids"] = True
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["choices"][0]


def check(ours: str, vllm: str, pairs: list[tuple[str, list[int]]], decode: Callable,
          tokens: int = 32) -> dict[str, Any]:
    """Greedy requests one at a time on both servers: for each, whether the tokens agree (vLLM's
    ids, decoded one by one, against adapterkit's token texts, and the two texts), where they
    first differ, and the largest log-probability gap over the tokens before that."""
    rows = []
    i_prompt: dict[tuple[int, ...], int] = {}
    for i, (model, prompt) in enumerate(pairs):
        i_prompt.setdefault(tuple(prompt), len(i_prompt))
        both = {}
        for side in (("ours", "vllm") if i % 2 == 0 else ("vllm", "ours")):
            both[side] = _complete(ours if side == "ours" else vllm, model, prompt, tokens,
                                   side == "vllm")
        a, v = both["ours"], both["vllm"]
        v_ids = [int(t.split(":", 1)[1]) for t in v["logprobs"]["tokens"]]
        v_tokens = [decode(t) for t in v_ids]
        a_tokens = a["logprobs"]["tokens"]
        first = next((j for j, (x, y) in enumerate(zip(a_tokens, v_tokens)) if x != y),
                     None if len(a_tokens) == len(v_tokens) else min(len(a_tokens), len(v_tokens)))
        same = first is None and a["text"] == v["text"]
        upto = len(a_tokens) if first is None else first
        gaps = [abs(x - y) for x, y in zip(a["logprobs"]["token_logprobs"][:upto],
                                           v["logprobs"]["token_logprobs"][:upto])]
        rows.append({"model": model, "prompt": i_prompt[tuple(prompt)], "match": same,
                     "first_difference": first,
                     "max_logprob_gap": max(gaps) if gaps else None, "ours": a["text"],
                     "vllm": v["text"]})
    return summarize_check(rows)


def summarize_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of matching requests, overall and for the base and the adapters; adapter requests
    whose output equals the base model's on the same prompt show how much the check can see."""
    base = {r["prompt"]: r["ours"] for r in rows if r["model"] == BASE_ID}
    adapters = [r for r in rows if r["model"] != BASE_ID]
    gaps = [r["max_logprob_gap"] for r in rows if r["max_logprob_gap"] is not None]
    return {"requests": len(rows), "matched": sum(r["match"] for r in rows),
            "base_matched": sum(r["match"] for r in rows if r["model"] == BASE_ID),
            "base_requests": len(rows) - len(adapters),
            "adapter_matched": sum(r["match"] for r in adapters),
            "adapter_requests": len(adapters),
            "adapter_outputs_equal_to_base": sum(base.get(r["prompt"]) == r["ours"]
                                             for r in adapters),
            "max_logprob_gap": max(gaps) if gaps else None, "rows": rows}
