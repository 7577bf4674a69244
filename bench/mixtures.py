"""Cost of adapters that choose adapters: a Mixture (trained-router shape, token routing, top-2)
and an Arrow (top-2) over 8 LoRA experts (r=8 on q and v), as a ratio to one LoRA, measured
interleaved in one run, medians.

- ``forward``: MiniLM (all-MiniLM-L6-v2), 32 examples x 64 tokens, no grad.
- ``decode``: a small llama (hidden 256, 4 layers, vocab 4096), one-token decode steps at batch
  32 with a KV cache of 16 tokens (cropped back after every step).

Writes bench/results/mixtures.json and mixtures.md, and the table into docs/composition.md
(``MIX_DOC``). BENCH_ROUNDS (default 10) sets the rounds,
BENCH_THREADS the threads. Goal: both ratios <= 1.5.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, pin_threads, table, write

import adapterkit as ak

EXPERTS, BATCH, TOP_K = 8, 32, 2
NAMES = tuple(f"e{i}" for i in range(EXPERTS))
BEGIN, END = "<!-- mixtures:begin -->", "<!-- mixtures:end -->"


def _setup(model: torch.nn.Module, targets: tuple[str, ...]) -> tuple[ak.AdapterKit, ak.Mixture,
                                                                       ak.Arrow]:
    kit = ak.AdapterKit(model)
    g = torch.Generator().manual_seed(0)
    for name in NAMES:
        kit.add(name, ak.LoRA(r=8, alpha=16, targets=targets))
        with torch.no_grad():
            for p in kit.parameters(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    mix = ak.Mixture(*NAMES, top_k=TOP_K, name="mix")
    kit.add_router(mix)
    with torch.no_grad():
        for p in kit.parameters("mix"):
            p.copy_(torch.randn(p.shape, generator=g))
    arrow = ak.Arrow(*NAMES, top_k=TOP_K)
    for name in NAMES:
        ak.Arrow.prototypes(kit, name)  # computed once, as at the first activation
    return kit, mix, arrow


def cases(kit: ak.AdapterKit, mix: ak.Mixture, arrow: ak.Arrow,
          step: Callable[[], None]) -> dict[str, Callable[[], None]]:
    def under(comp: object) -> Callable[[], None]:
        def run() -> None:
            if kit.composition != comp:
                kit.activate(comp)  # type: ignore[arg-type]
            step()
        return run

    return {"one LoRA": under("e0"), f"Mixture of {EXPERTS}, top-{TOP_K}": under(mix),
            f"Arrow of {EXPERTS}, top-{TOP_K}": under(arrow)}


def forward(rounds: int) -> dict[str, float]:
    from adapterkit.train.models import load_classifier

    model, _ = load_classifier("minilm", num_labels=2)
    model.eval()
    kit, mix, arrow = _setup(model, ("attn.q", "attn.v"))
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(1000, 30000, (BATCH, 64), generator=g),
             "attention_mask": torch.ones(BATCH, 64, dtype=torch.long)}

    def step() -> None:
        with torch.inference_mode():
            model(**batch)

    return interleaved(cases(kit, mix, arrow, step), rounds=rounds)


def decode(rounds: int) -> dict[str, float]:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=4, intermediate_size=1024,
                        max_position_embeddings=128)
    model = T.LlamaForCausalLM(cfg).eval()
    kit, mix, arrow = _setup(model, ("attn.q", "attn.v"))
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(5, 4096, (BATCH, 16), generator=g)
    token = torch.randint(5, 4096, (BATCH, 1), generator=g)
    with torch.inference_mode():
        kit.activate(None)
        cache = model(input_ids=prompt, use_cache=True).past_key_values

    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def step() -> None:
        with torch.inference_mode():
            model(input_ids=token, use_cache=True, **{key: cache})
            cache.crop(-1)  # drop the decoded token again

    return interleaved(cases(kit, mix, arrow, step), rounds=rounds, inner=10)


def main() -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "10"))
    load_start = os.getloadavg()[0]
    results = {"forward (MiniLM, 32 x 64)": forward(rounds),
               "decode step (llama 256x4, batch 32)": decode(rounds)}
    rows = []
    for label, med in results.items():
        one = med["one LoRA"]
        rows += [(label, name, f"{t * 1000:.2f}", f"{t / one:.3f}") for name, t in med.items()]
    md = table(rows, ("workload", "case", "median ms", "ratio to one LoRA"))
    print(f"Mixtures of {EXPERTS} LoRA experts, {threads} thread(s), {rounds} interleaved rounds")
    print(md)
    load = os.getloadavg()[0]
    write("mixtures", {"rounds": rounds, "threads": threads, "median_seconds": results,
                       "loadavg_1min": {"start": load_start, "end": load}})
    note = (f"`BENCH_THREADS={threads} BENCH_ROUNDS={rounds} python bench/mixtures.py`, torch "
            f"{torch.__version__}, 1-minute load average {load_start:.1f} at the start of the run "
            f"and {load:.1f} at the end ({os.cpu_count()} CPUs). Goal: both ratios <= 1.5.")
    Path(__file__).resolve().parent.joinpath("results", "mixtures.md").write_text(
        f"{note}\n\n{md}\n")
    doc = Path(os.environ.get("MIX_DOC", Path(__file__).resolve().parents[1] / "docs"
                              / "composition.md"))
    start, rest = doc.read_text().split(BEGIN, 1)
    doc.write_text(f"{start}{BEGIN}\n{note}\n\n{md}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
