"""The vLLM side of bench/serve.py without vLLM: its command line, the output check's counts
and the side-by-side goals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import serve_vllm
import serve_vs_report


def test_argv_with_and_without_lora() -> None:
    base = serve_vllm.vllm_argv("py", "/m", "bfloat16", [])
    assert base[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-lora" not in base
    assert base[base.index("--served-model-name") + 1] == "smollm2"
    lora = serve_vllm.vllm_argv("py", "/m", "float32", [("a", "/a"), ("b", "/b"), ("c", "/c")], 2)
    flags = dict(zip(lora[lora.index("--enable-lora") + 1::2], lora[lora.index("--enable-lora")
                                                                     + 2::2]))
    assert flags["--max-loras"] == "2" and flags["--max-cpu-loras"] == "3"
    assert lora[-3:] == ["a=/a", "b=/b", "c=/c"]
    assert lora[lora.index("--dtype") + 1] == "float32"


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "fp8"}, "use float32"),
    ({"max_loras": 3}, "between 1 and the 2"),
    ({"loras": [("a", "/a"), ("a", "/b")]}, "distinct"),
    ({"loras": [], "max_loras": 1}, "no LoRA slots"),
])
def test_argv_refuses(kwargs: dict, message: str) -> None:
    args = {"dtype": "bfloat16", "loras": [("a", "/a"), ("b", "/b")], **kwargs}
    with pytest.raises(ValueError, match=message):
        serve_vllm.vllm_argv("py", "/m", **args)


def test_check_counts() -> None:
    rows = [{"model": "smollm2", "prompt": 0, "match": True, "max_logprob_gap": 0.0,
             "ours": "x", "vllm": "x"},
            {"model": "a", "prompt": 0, "match": True, "max_logprob_gap": 0.1, "ours": "x",
             "vllm": "x"},
            {"model": "a", "prompt": 1, "match": False, "max_logprob_gap": None, "ours": "y",
             "vllm": "z"}]
    c = serve_vllm.summarize_check(rows)
    assert (c["matched"], c["base_matched"], c["adapter_matched"]) == (2, 1, 1)
    assert c["adapter_outputs_equal_to_base"] == 1  # prompt 1 has no base request
    assert c["max_logprob_gap"] == 0.1


def _row(side: str, case: str, tput: float, p99: float) -> dict:
    return {"side": side, "case": case, "arrival": "c=32", "output_throughput": tput,
            "ttft_ms": {"p99": p99}}


def test_goals_judge_ratios() -> None:
    rows = [_row("adapterkit", "one adapter", 90, 10), _row("vllm", "one adapter", 30, 20),
            _row("adapterkit", "K=32", 80, 30), _row("vllm", "K=32", 30, 20),
            _row("adapterkit", "base", 50, 1), _row("vllm", "base", 100, 1)]
    goals = {g["goal"]: g for g in serve_vs_report.vs_goals({"main": {"rows": rows}})}
    assert goals["adapterkit / vLLM, output tok/s at c=32 (one adapter)"]["met"] is True
    assert goals["adapterkit / vLLM, output tok/s at c=32 (K=32)"]["met"] is False
    assert goals["adapterkit / vLLM, output tok/s at c=32 (base)"]["value"] == 0.5
    assert goals["adapterkit / vLLM, p99 TTFT at c=32 (K=32)"]["met"] is False
    assert goals["adapterkit / vLLM, p99 TTFT at c=32 (K=8)"]["met"] is None  # not run
