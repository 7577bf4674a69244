"""Forward-time overhead of adapters on MiniLM, ours vs PEFT, measured interleaved in one run.

Batch 32 x 64 tokens, no grad. Prints ratios to the base model and writes
bench/results/overhead.json and overhead.md. BENCH_ROUNDS (default 30) sets the rounds.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, pin_threads, table, write

import adapterkit as ak
from adapterkit.hf import load_classifier


def _randomise(params) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_variants() -> tuple[dict[str, torch.nn.Module], dict[str, int]]:
    base, _ = load_classifier("minilm", num_labels=2)
    base.eval()
    variants: dict[str, torch.nn.Module] = {"base": base}
    counts: dict[str, int] = {}
    for label, cfg, merge in (("ours LoRA unmerged", ak.LoRA(r=8, alpha=16), False),
                              ("ours LoRA merged", ak.LoRA(r=8, alpha=16), True),
                              ("ours Bottleneck", ak.Bottleneck(reduction=16), False)):
        m = copy.deepcopy(base)
        kit = ak.AdapterKit(m)
        kit.add("a", cfg)
        _randomise(kit.parameters("a"))
        kit.activate("a")
        if merge:
            kit.merge("a")
        counts[label] = sum(p.numel() for p in kit.parameters("a"))
        variants[label] = m
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("peft is not installed: PEFT rows skipped")
        return variants, counts
    for label, merge in (("PEFT LoRA unmerged", False), ("PEFT LoRA merged", True)):
        pm = get_peft_model(copy.deepcopy(base),
                            LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
        lora = [p for n, p in pm.named_parameters() if "lora_" in n]
        counts[label] = sum(p.numel() for p in lora)
        _randomise(lora)
        variants[label] = pm.merge_and_unload() if merge else pm
    return variants, counts


def main() -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "30"))
    variants, counts = build_variants()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (32, 64), generator=g),
             "attention_mask": torch.ones(32, 64, dtype=torch.long)}

    def call(m):
        def run():
            with torch.inference_mode():
                m(**batch)
        return run

    med = interleaved({k: call(m) for k, m in variants.items()}, rounds=rounds)
    base = med["base"]
    rows = [(k, f"{v * 1000:.1f}", f"{v / base:.3f}", f"{counts.get(k, 0):,}")
            for k, v in med.items()]
    ratios = {k: v / base for k, v in med.items()}
    if "PEFT LoRA unmerged" in med:
        ours_vs_peft = med["ours LoRA unmerged"] / med["PEFT LoRA unmerged"]
        ratios["ours/PEFT LoRA unmerged"] = ours_vs_peft
        rows.append(("ours / PEFT (unmerged)", "", f"{ours_vs_peft:.3f}", ""))
    md = table(rows, ("variant", "median ms", "ratio to base", "adapter params"))
    print(f"MiniLM forward, batch 32 x 64 tokens, {threads} threads, {rounds} interleaved rounds")
    print(md)
    write("overhead", {"rounds": rounds, "median_seconds": med, "ratios": ratios,
                       "adapter_params": counts})
    Path(__file__).resolve().parent.joinpath("results", "overhead.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
