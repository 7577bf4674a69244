"""Forward-time overhead of adapters on MiniLM, ours vs PEFT, measured interleaved in one run.

Batch 32 x 64 tokens, no grad. Each library gets one model that is switched between its states
(base, unmerged, merged) in an untimed step before each timed forward, so that every ratio
compares the same tensors in the same memory. Prints ratios to each library's own base and
writes bench/results/overhead.json and overhead.md. BENCH_ROUNDS (default 30) sets the rounds.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, pin_threads, table, write

import adapterkit as ak
from adapterkit.train.models import load_classifier


def _randomise(params) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def ours_cases(base: torch.nn.Module, run: Callable) -> tuple[dict, dict[str, int]]:
    model = copy.deepcopy(base)
    kit = ak.AdapterKit(model)
    kit.add("lora", ak.LoRA(r=8, alpha=16))
    kit.add("bn", ak.Bottleneck(reduction=16))
    _randomise(kit.parameters())

    def state(active: str | None, merged: bool) -> Callable[[], None]:
        def setup() -> None:
            kit.unmerge()
            kit.activate(active)
            if merged:
                kit.merge("lora")
        return setup
    forward = run(model)
    cases = {"ours base": (state(None, False), forward),
             "ours LoRA unmerged": (state("lora", False), forward),
             "ours LoRA merged": (state("lora", True), forward),
             "ours Bottleneck": (state("bn", False), forward)}
    n_lora = sum(p.numel() for p in kit.parameters("lora"))
    counts = {"ours LoRA unmerged": n_lora, "ours LoRA merged": n_lora,
              "ours Bottleneck": sum(p.numel() for p in kit.parameters("bn"))}
    return cases, counts


def peft_cases(base: torch.nn.Module, run: Callable) -> tuple[dict, dict[str, int]]:
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(base),
                        LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    lora = [p for n, p in pm.named_parameters() if "lora_" in n]
    _randomise(lora)
    forward = run(pm)

    def disabled() -> None:
        with torch.inference_mode(), pm.disable_adapter():
            pm(**run.batch)

    is_merged = [False]

    def state(merged: bool) -> Callable[[], None]:
        def setup() -> None:
            if is_merged[0]:
                pm.unmerge_adapter()
            if merged:
                pm.merge_adapter()
            is_merged[0] = merged
        return setup
    cases = {"PEFT base (adapter disabled)": (state(False), disabled),
             "PEFT LoRA unmerged": (state(False), forward),
             "PEFT LoRA merged": (state(True), forward)}
    n_lora = sum(p.numel() for p in lora)
    return cases, {"PEFT LoRA unmerged": n_lora, "PEFT LoRA merged": n_lora}


def main() -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "30"))
    base, _ = load_classifier("minilm", num_labels=2)
    base.eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (32, 64), generator=g),
             "attention_mask": torch.ones(32, 64, dtype=torch.long)}

    def run(m):
        def forward():
            with torch.inference_mode():
                m(**batch)
        return forward
    run.batch = batch
    cases, counts = ours_cases(base, run)
    try:
        more, peft_counts = peft_cases(base, run)
        cases.update(more)
        counts.update(peft_counts)
    except ImportError:
        print("peft is not installed: PEFT rows skipped")
    med = interleaved(cases, rounds=rounds)
    own_base = {k: med["ours base"] if k.startswith("ours") else med.get(
        "PEFT base (adapter disabled)", 1.0) for k in med}
    ratios = {k: v / own_base[k] for k, v in med.items()}
    rows = [(k, f"{v * 1000:.1f}", f"{ratios[k]:.3f}", f"{counts.get(k, 0):,}")
            for k, v in med.items()]
    if "PEFT LoRA unmerged" in med:
        ratios["ours/PEFT LoRA unmerged"] = med["ours LoRA unmerged"] / med["PEFT LoRA unmerged"]
        ratios["ours/PEFT LoRA unmerged overhead"] = (ratios["ours LoRA unmerged"]
                                                      / ratios["PEFT LoRA unmerged"])
        rows.append(("ours / PEFT unmerged (raw time)", "",
                     f"{ratios['ours/PEFT LoRA unmerged']:.3f}", ""))
        rows.append(("ours / PEFT unmerged (each vs own base)", "",
                     f"{ratios['ours/PEFT LoRA unmerged overhead']:.3f}", ""))
    md = table(rows, ("variant", "median ms", "ratio to own base", "adapter params"))
    print(f"MiniLM forward, batch 32 x 64 tokens, {threads} threads, {rounds} interleaved rounds")
    print(md)
    write("overhead", {"rounds": rounds, "median_seconds": med, "ratios": ratios,
                       "adapter_params": counts})
    Path(__file__).resolve().parent.joinpath("results", "overhead.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
