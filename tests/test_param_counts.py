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


@pytest.mark.parametrize("r", [1, 4])
def test_shira_count_with_r_is_peft_formula(r: int) -> None:
    """Bhardwaj et al. / PEFT: ``r (in + out)`` masked entries per target, one value each, as
    many as a rank-``r`` LoRA; the mask is an index buffer, not a parameter."""
    model, d = _llama()
    kit, n = _trainable(model, ak.SHiRA(r=r))
    h = d["hidden"]
    assert n == d["layers"] * (r * (h + d["q"]) + r * (h + d["kv"]))
    _check_shira_masks(kit)


@pytest.mark.parametrize("fraction", [None, 0.02, 0.3])
def test_shira_count_with_fraction(fraction: float | None) -> None:
    """``round(fraction * in * out)`` entries per target; no ``r`` or ``fraction``: 1%."""
    model, d = _llama()
    kit, n = _trainable(model, ak.SHiRA(fraction=fraction, mask_type="magnitude"))
    f, h = fraction or 0.01, d["hidden"]
    assert n == d["layers"] * (round(f * h * d["q"]) + round(f * h * d["kv"]))
    _check_shira_masks(kit)


def _check_shira_masks(kit: ak.AdapterKit) -> None:
    """Each value has its own entry: the delta has exactly as many nonzero entries."""
    for host, module in kit.record("a").modules.items():
        assert {name for name, _ in module.named_parameters()} == {"shira_weight"}
        assert not module.shira_indices.requires_grad
        with torch.no_grad():
            module.shira_weight.fill_(1.0)
        dw = module.delta_weight(kit.model.get_submodule(host))
        assert int(torch.count_nonzero(dw)) == module.shira_weight.numel()


@pytest.mark.parametrize(("sparsity", "criterion", "scope"),
                         [(0.5, "magnitude", "global"), (0.8, "random", "layer"),
                          (0.4, "snip", "global")])
def test_sparse_adapter_count(sparsity: float, criterion: str, scope: str) -> None:
    """He et al.: the stored adapter is a dense bottleneck (``2 h m + m + h`` per site); of its
    ``2 h m`` weights per site ``round((1 - s) * n)`` are kept, ``n`` counted over all sites
    (global) or per weight matrix (layer); biases stay dense."""
    model, d = _llama()
    reduction = 4
    kit, n = _trainable(model, ak.SparseAdapter(reduction=reduction, placement="both",
                                                sparsity=sparsity, criterion=criterion,
                                                scope=scope))
    h = d["hidden"]
    m = h // reduction
    sites = 2 * d["layers"]
    assert n == sites * (2 * h * m + m + h)
    modules = list(kit.record("a").modules.values())
    masks = [mask for module in modules for mask in (module.down_mask, module.up_mask)]
    if scope == "global":
        kept = round((1 - sparsity) * sites * 2 * h * m)
        assert sum(int(mask.sum()) for mask in masks) == kept
    else:
        assert all(int(mask.sum()) == round((1 - sparsity) * h * m) for mask in masks)
        kept = sites * 2 * round((1 - sparsity) * h * m)
    assert sum(module.nonzero_count() for module in modules) == kept + sites * (m + h)


@pytest.mark.parametrize(("r", "r_sequential"), [(2, None), (4, 1)])
def test_hydra_count_is_the_paper_formula(r: int, r_sequential: int | None) -> None:
    """Kim et al.: per target (in -> out) a parallel LoRA ``r_p (in + out)`` and a sequential
    branch on the output ``r_s (out + out)``; defaults attn.out (o_proj: q -> hidden) and ffn.out
    (down_proj: ffn -> hidden)."""
    model, d = _llama()
    _, n = _trainable(model, ak.Hydra(r=r, r_sequential=r_sequential))
    h, r_s = d["hidden"], r_sequential or r
    assert n == d["layers"] * (r * (d["q"] + h) + r_s * 2 * h + r * (d["ffn"] + h) + r_s * 2 * h)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(("coupling", "reduction"), [("nice", 2), ("nice", 4), ("glow", 2)])
def test_invertible_count_is_the_paper_formula(family: str, coupling: str, reduction: int) -> None:
    """Pfeiffer et al. (MAD-X): ``F`` and ``G`` are each a down-projection from one half
    ``h/2 -> m`` and an up-projection ``m -> h/2`` with biases, ``m = (h/2) / reduction``
    (``h/4`` with reduction 2); Glow's up-projections give a scale and a shift (``2 * h/2``).
    One block per adapter: the inverse at GPT-2's tied ``lm_head`` adds no parameters."""
    model = build(family)
    half = model.config.hidden_size // 2
    _, n = _trainable(model, ak.InvertibleAdapter(coupling=coupling, reduction=reduction))
    m, out = half // reduction, half * (2 if coupling == "glow" else 1)
    assert n == 2 * ((half * m + m) + (m * out + out))


def test_union_count_is_the_sum_of_its_members() -> None:
    """LoRA at q, v and IA3 at k, v, ffn.out share v: one module per host, every member's own."""
    model, d = _llama()
    lora, ia3 = ak.LoRA(r=4), ak.IA3()
    _, n = _trainable(model, ak.MethodUnion((lora, ia3)))
    h = d["hidden"]
    assert n == d["layers"] * (4 * (h + d["q"]) + 4 * (h + d["kv"]) + 2 * d["kv"] + d["ffn"])
    assert n == sum(_trainable(build("llama"), m)[1] for m in (lora, ia3))


@pytest.mark.parametrize("gated", [False, True])
def test_unipelt_count_is_its_members_plus_one_gate_per_submodule(gated: bool) -> None:
    """Mao et al.: LoRA ``r (in + out)`` at q and v, a prefix of P positions of 2 L kv numbers,
    a bottleneck ``h m + m + m h + h`` (m = h // reduction) per FFN, and with gates a Linear(h, 1)
    (``h + 1``) per LoRA site, per layer's prefix and per adapter."""
    model, d = _llama()
    config = ak.UniPELT(r=4, num_tokens=3, reduction=4, gated=gated)
    _, n = _trainable(model, config)
    h, n_layers, m = d["hidden"], d["layers"], d["hidden"] // 4
    lora = n_layers * (4 * (h + d["q"]) + 4 * (h + d["kv"]))
    prefix = 3 * 2 * n_layers * d["kv"]
    adapter = n_layers * (h * m + m + m * h + h)
    gates = n_layers * 4 * (h + 1) if gated else 0
    assert n == lora + prefix + adapter + gates
    assert n == sum(_trainable(build("llama"), member)[1] for member in config.members) + gates


def test_mam_count_is_its_members() -> None:
    """He et al.: a prefix of P positions of 2 L kv numbers plus a parallel bottleneck at each FFN
    (``h m + m + m h + h``, m = h // reduction)."""
    model, d = _llama()
    _, n = _trainable(model, ak.MAM(num_tokens=5, reduction=2))
    h, m = d["hidden"], d["hidden"] // 2
    assert n == 5 * 2 * d["layers"] * d["kv"] + d["layers"] * (h * m + m + m * h + h)


@pytest.mark.parametrize(("r", "min_rank", "rank"), [(2, 1, None), (8, 3, 5)])
def test_dylora_count_is_lora_at_r(r: int, min_rank: int, rank: int | None) -> None:
    """Valipour et al.: one rank-r LoRA pair per site, ``r (in + out)``, whatever ranks are
    trained or used; the same count as ``LoRA(r=r)``."""
    model, d = _llama()
    _, n = _trainable(model, ak.DyLoRA(r=r, min_rank=min_rank, rank=rank))
    h = d["hidden"]
    assert n == d["layers"] * (r * (h + d["q"]) + r * (h + d["kv"]))
    _, n_lora = _trainable(_llama()[0], ak.LoRA(r=r))
    assert n == n_lora


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2"])
def test_pissa_count_is_lora(init: str) -> None:
    """PiSSA trains LoRA's ``r (in + out)`` per site; its initial factors are buffers, not
    trained or counted."""
    model, d = _llama()
    kit, n = _trainable(model, ak.LoRA(r=4, init=init))
    h = d["hidden"]
    assert n == d["layers"] * (4 * (h + d["q"]) + 4 * (h + d["kv"]))
    for module in kit.record("a").modules.values():
        assert {name for name, _ in module.named_parameters()} == {"lora_A", "lora_B"}
        assert not module.pissa_A0.requires_grad and not module.pissa_B0.requires_grad
