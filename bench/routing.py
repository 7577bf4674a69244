"""Per-example routing cost: a batch whose rows use K distinct LoRA adapters (r=8 on q, v), as a
ratio to the same batch with one adapter; ours (``kit.route``) and PEFT (``adapter_names=``,
a PeftModel with 32 adapters loaded), measured interleaved in one run, medians.

- MiniLM encoder: 32 examples x 64 tokens, no grad.
- A small llama (hidden 256, 4 layers, vocab 4096): one-token decode steps with a KV cache of
  16 tokens at batch 32 (the cache is cropped back after every step).

Writes bench/results/routing.json and routing.md. BENCH_ROUNDS (default 10) sets the rounds,
BENCH_THREADS the threads; ``--only minilm`` or ``--only decode`` runs one half. Rows marked
``dense``/``gather`` force that LoRA kernel; the others use the automatic choice.
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

N_ADAPTERS, BATCH, KS = 32, 32, (1, 8, 32)


def _randomise(params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _ids(k: int) -> list[str]:
    return [f"a{i % k}" for i in range(BATCH)]


def _ours(base: torch.nn.Module, targets: tuple[str, ...]) -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = copy.deepcopy(base)
    kit = ak.AdapterKit(model)
    for i in range(N_ADAPTERS):
        kit.add(f"a{i}", ak.LoRA(r=8, alpha=16, targets=targets))
        _randomise(kit.parameters(f"a{i}"), i)
    return model, kit


def _peft(base: torch.nn.Module, modules: list[str]) -> torch.nn.Module | None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("peft is not installed: PEFT rows skipped")
        return None
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=modules)
    pm = get_peft_model(copy.deepcopy(base), cfg, adapter_name="a0")
    for i in range(1, N_ADAPTERS):
        pm.add_adapter(f"a{i}", cfg)
    for i in range(N_ADAPTERS):
        _randomise([p for n, p in pm.named_parameters() if f".a{i}." in n and "lora_" in n], i)
    pm.set_adapter("a0")
    return pm.eval()


def cases(step: Callable[..., None], kit: ak.AdapterKit, peft: torch.nn.Module | None,
          peft_step: Callable[..., None]) -> dict[str, Callable[[], None]]:
    """``step(model)`` runs one batch; ours under ``kit.route``, PEFT with ``adapter_names``."""
    def ours(k: int | None, strategy: str | None = None) -> Callable[[], None]:
        def run() -> None:
            if k is None:
                kit.activate("a0")
                step(kit.model)
                return
            with kit.route(_ids(k), strategy=strategy):
                step(kit.model)
        return run

    out: dict[str, Callable[[], None]] = {"ours one adapter": ours(None)}
    out.update({f"ours K={k}": ours(k) for k in KS})
    out.update({f"ours K={k} {s}": ours(k, s) for k in KS[1:] for s in ("dense", "gather")})
    if peft is not None:
        out["PEFT one adapter"] = lambda: peft_step(peft, None)
        out.update({f"PEFT K={k}": (lambda k=k: peft_step(peft, _ids(k))) for k in KS})
    return out


def minilm(rounds: int) -> dict[str, float]:
    from adapterkit.train.models import load_classifier

    base, _ = load_classifier("minilm", num_labels=2)
    base.eval()
    _, kit = _ours(base, ("attn.q", "attn.v"))
    peft = _peft(base, ["query", "value"])
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (BATCH, 64), generator=g),
             "attention_mask": torch.ones(BATCH, 64, dtype=torch.long)}

    def step(model: torch.nn.Module) -> None:
        with torch.inference_mode():
            model(**batch)

    def peft_step(model: torch.nn.Module, names: list[str] | None) -> None:
        with torch.inference_mode():
            model(**batch, **({"adapter_names": names} if names else {}))

    return interleaved(cases(step, kit, peft, peft_step), rounds=rounds)


def decode(rounds: int) -> dict[str, float]:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=4, intermediate_size=1024,
                        max_position_embeddings=128)
    base = T.LlamaForCausalLM(cfg).eval()
    _, kit = _ours(base, ("attn.q", "attn.v"))
    peft = _peft(base, ["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 4096, (BATCH, 16), generator=g)
    token = torch.randint(5, 4096, (BATCH, 1), generator=g)
    caches: dict[int, object] = {}

    def one_step(model: torch.nn.Module, **extra: object) -> None:
        with torch.inference_mode():
            cache = caches.get(id(model))
            if cache is None:
                kit.activate(None)
                cache = caches[id(model)] = model(input_ids=prompt, use_cache=True).past_key_values
            model(input_ids=token, past_key_values=cache, use_cache=True, **extra)
            cache.crop(-1)  # drop the decoded token again

    def peft_step(model: torch.nn.Module, names: list[str] | None) -> None:
        one_step(model, **({"adapter_names": names} if names else {}))

    return interleaved(cases(one_step, kit, peft, peft_step), rounds=rounds, inner=10)


def _rows(label: str, med: dict[str, float]) -> list[tuple[str, ...]]:
    rows = []
    for who in ("ours", "PEFT"):
        one = med.get(f"{who} one adapter")
        if one is None:
            continue
        for name, t in med.items():
            if name.startswith(who + " "):
                rows.append((label, name, f"{t * 1000:.2f}", f"{t / one:.3f}"))
    return rows


def main(argv: list[str]) -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "10"))
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    results: dict[str, dict[str, float]] = {}
    if only in (None, "minilm"):
        results["minilm"] = minilm(rounds)
    if only in (None, "decode"):
        results["decode"] = decode(rounds)
    rows = [r for label, med in results.items() for r in _rows(label, med)]
    md = table(rows, ("workload", "case", "median ms", "ratio to one adapter"))
    print(f"Routing, batch {BATCH}, {threads} threads, {rounds} interleaved rounds")
    print(md)
    ratios = {label: {n: t / med[f"{n.split()[0]} one adapter"] for n, t in med.items()}
              for label, med in results.items()}
    write("routing", {"rounds": rounds, "median_seconds": results, "ratios": ratios})
    Path(__file__).resolve().parent.joinpath("results", "routing.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
