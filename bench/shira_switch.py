"""Adapter switching time on MiniLM: SHiRA's sparse scatter against LoRA fusion.

Switching an adapter on a model that runs with merged weights means taking one adapter's delta
out of the weights and putting another's in. One timed call here is one round trip over every
target of all six layers (attn.q, attn.k, attn.v, attn.out, ffn.in, ffn.out):

- LoRA fusion: ``W += s * B @ A`` then ``W -= s * B @ A`` at every site (the tensor work of
  ``kit.merge``/``kit.unmerge``), and the same through ``kit.merge``/``kit.unmerge``;
- SHiRA scatter: ``W[mask] += values`` then ``W[mask] -= values`` (``SHiRAModule.scatter_into``),
  at PEFT's size for ``r`` (``r * (in + out)`` entries, as many as the LoRA has) and at 1% of
  the entries (the paper's budget);
- SHiRA through ``kit.merge``/``kit.unmerge``, which adds the dense delta, for reference.

Cases run interleaved; medians are reported. Prints the ratios LoRA fusion / each case (the
tensor-level LoRA fusion as the reference) and writes bench/results/shira_switch.json.
BENCH_ROUNDS (default 50) sets the rounds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, pin_threads, table, write

import adapterkit as ak
from adapterkit.core.merging import add_weight_delta
from adapterkit.train.models import model_dir

TARGETS = ("attn.q", "attn.k", "attn.v", "attn.out", "ffn.in", "ffn.out")
R = 8
LORA = "LoRA fusion (W +/- s B@A)"


def _randomise(params) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _load() -> torch.nn.Module:
    from transformers import AutoModel

    from adapterkit.train.models import _quiet

    _quiet()
    return AutoModel.from_pretrained(model_dir("minilm")).eval()


def _scatter(kit: ak.AdapterKit, name: str):
    pairs = [(kit.model.get_submodule(h), m) for h, m in kit.record(name).modules.items()]

    def switch() -> None:
        for host, module in pairs:
            module.scatter_into(host, 1.0)
        for host, module in pairs:
            module.scatter_into(host, -1.0)
    return switch


def _fusion(kit: ak.AdapterKit, name: str):
    pairs = [(kit.model.get_submodule(h), m) for h, m in kit.record(name).modules.items()]

    def switch() -> None:
        with torch.no_grad():
            for host, module in pairs:
                add_weight_delta(host.weight, module.delta_weight(host), 1.0)
            for host, module in pairs:
                add_weight_delta(host.weight, module.delta_weight(host), -1.0)
    return switch


def _kit_merge(kit: ak.AdapterKit, name: str):
    def switch() -> None:
        kit.merge(name)
        kit.unmerge(name)
    return switch


def main() -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "50"))
    model = _load()
    kit = ak.AdapterKit(model)
    kit.add("lora", ak.LoRA(r=R, alpha=2 * R, targets=TARGETS))
    kit.add("shira_r", ak.SHiRA(r=R, targets=TARGETS))
    kit.add("shira_1pct", ak.SHiRA(fraction=0.01, targets=TARGETS))
    _randomise(kit.parameters())
    cases = {
        LORA: _fusion(kit, "lora"),
        "LoRA kit.merge + unmerge": _kit_merge(kit, "lora"),
        f"SHiRA r={R} scatter": _scatter(kit, "shira_r"),
        "SHiRA 1% scatter": _scatter(kit, "shira_1pct"),
        f"SHiRA r={R} kit.merge + unmerge (dense delta)": _kit_merge(kit, "shira_r"),
    }
    counts = {name: sum(p.numel() for p in kit.parameters(name)) for name in kit.names}
    med = interleaved(cases, rounds=rounds)
    lora = med[LORA]
    ratios = {f"{LORA} / {k}": lora / v for k, v in med.items() if k != LORA}
    ratios["LoRA kit.merge / SHiRA kit.merge"] = (med["LoRA kit.merge + unmerge"]
                                                  / med[f"SHiRA r={R} kit.merge + unmerge (dense delta)"])
    rows = [(k, f"{v * 1000:.3f}", f"{lora / v:.2f}") for k, v in med.items()]
    print(f"MiniLM adapter switch (out + in, {len(kit.record('lora').sites)} sites), "
          f"{threads} threads, {rounds} interleaved rounds")
    print(table(rows, ("variant", "median ms", "LoRA fusion / this")))
    print("adapter parameters:", counts)
    path = write("shira_switch", {"rounds": rounds, "targets": list(TARGETS), "r": R,
                                  "median_seconds": med, "ratios": ratios,
                                  "adapter_params": counts})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
