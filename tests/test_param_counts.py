"""Trainable-parameter counts: each method's formula against ``kit.summary()``.

Tiny llama has grouped-query attention (4 query heads, 2 key/value heads), so q and v differ in
their output size and shared or sliced state (VeRA) is exercised.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterkit as ak

from .models import build


def _llama() -> tuple[torch.nn.Module, dict[str, int]]:
    model = build("llama")
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    dims = {
        "hidden": cfg.hidden_size, "q": cfg.num_attention_heads * head_dim,
        "kv": cfg.num_key_value_heads * head_dim, "ffn": cfg.intermediate_size,
        "layers": cfg.num_hidden_layers,
    }
    assert dims["kv"] < dims["q"], "the tiny llama must use grouped-query attention"
    return model, dims


def _trainable(model: torch.nn.Module, config: Any) -> tuple[ak.AdapterKit, int]:
    kit = ak.AdapterKit(model)
    kit.add("a", config)
    n = kit.summary()[0]["trainable"]
    assert n == sum(p.numel() for p in kit.parameters("a"))
    assert n == sum(p.numel() for p in kit.train("a"))
    return kit, n


@pytest.mark.parametrize("r", [2, 8])
def test_lora_count(r: int) -> None:
    model, d = _llama()
    _, n = _trainable(model, ak.LoRA(r=r))
    h = d["hidden"]
    assert n == d["layers"] * (r * (h + d["q"]) + r * (h + d["kv"]))


@pytest.mark.parametrize("r", [2, 8])
def test_dora_count(r: int) -> None:
    """LoRA's ``r (in + out)`` plus one magnitude per output unit."""
    model, d = _llama()
    _, n = _trainable(model, ak.DoRA(r=r))
    h = d["hidden"]
    assert n == d["layers"] * (r * (h + d["q"]) + d["q"] + r * (h + d["kv"]) + d["kv"])


def test_ia3_count() -> None:
    """One entry per output unit of attn.k and attn.v, one per input unit of ffn.out."""
    model, d = _llama()
    _, n = _trainable(model, ak.IA3())
    assert n == d["layers"] * (d["kv"] + d["kv"] + d["ffn"])
    model, d = _llama()
    _, n = _trainable(model, ak.IA3(targets=("attn.q", "ffn.in"), feedforward=("ffn.in",)))
    assert n == d["layers"] * (d["q"] + 2 * d["hidden"])  # ffn.in: gate_proj and up_proj


@pytest.mark.parametrize("r", [4, 256])
def test_vera_count_is_the_paper_formula(r: int) -> None:
    """Kopiczko et al.: ``sum over sites of (r + out)``; the frozen projections are not counted."""
    model, d = _llama()
    kit, n = _trainable(model, ak.VeRA(r=r))
    assert n == d["layers"] * ((r + d["q"]) + (r + d["kv"]))
    modules = list(kit.record("a").modules.values())
    for module in modules:
        assert {name for name, _ in module.named_parameters()} == {"lambda_d", "lambda_b"}
        assert not module.vera_A.requires_grad and not module.vera_B.requires_grad
    # one projection pair for the adapter: the sites' buffers are views into it
    storages = {(m.vera_A.untyped_storage().data_ptr(), m.vera_B.untyped_storage().data_ptr())
                for m in modules}
    assert len(storages) == 1
    assert {tuple(m.vera_B.shape) for m in modules} == {(d["q"], r), (d["kv"], r)}


def test_vera_projections_get_no_gradient() -> None:
    model, _ = _llama()
    kit = ak.AdapterKit(model)
    kit.add("a", ak.VeRA(r=4))
    params = kit.train("a")
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    for module in kit.record("a").modules.values():
        assert module.vera_A.grad is None and module.vera_B.grad is None
        assert module.lambda_b.grad is not None and module.lambda_d.grad is not None


@pytest.mark.parametrize("placement", ["ffn", "both"])
def test_adapterbias_count_is_the_paper_formula(placement: str) -> None:
    """Fu et al.: per site the shift ``v`` (out) and ``L_alpha`` (in weights + 1 bias)."""
    model, d = _llama()
    _, n = _trainable(model, ak.AdapterBias(placement=placement))
    h = d["hidden"]  # attn.out (o_proj) and ffn.out (down_proj) both output the hidden size
    sites = d["layers"] * (2 if placement == "both" else 1)
    assert n == sites * (h + (h + 1))


@pytest.mark.parametrize(("phm_dim", "rank", "shared"), [(4, 1, True), (2, 3, True), (4, 2, False)])
def test_compacter_count_is_the_paper_formula(phm_dim: int, rank: int, shared: bool) -> None:
    """Mahabadi et al.: each PHM layer (in -> out) has ``n`` rank-``r`` factors
    ``s_i`` (out/n, r) and ``t_i`` (in/n, r), i.e. ``r (in + out)``, plus its bias; the rules
    ``A``: (n, n, n) count once when shared, once per site otherwise."""
    model, d = _llama()
    reduction = 4
    _, n = _trainable(model, ak.Compacter(reduction=reduction, placement="both", phm_dim=phm_dim,
                                          rank=rank, shared_rule=shared))
    h = d["hidden"]
    m = h // reduction
    sites = 2 * d["layers"]
    per_site = rank * (h + m) + m + rank * (m + h) + h
    rules = phm_dim ** 3 * (1 if shared else sites)
    assert n == sites * per_site + rules
