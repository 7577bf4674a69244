"""InvertibleAdapter and Hydra specifics: the math against hand computations, exact inverses,
the tied-head path, exact merges and routing. The shared invariants run on both through
``tests/cases.py``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from torch import nn

import adapterkit as ak
from adapterkit.methods.invertible import InverseModule, InvertibleModule

from .helpers import perturb
from .models import _DEC, _ENC, V, build, inputs_for, run

# -- InvertibleAdapter -------------------------------------------------------------------------


def _mlp(net: nn.Sequential, u: torch.Tensor) -> torch.Tensor:
    """A coupling subnet by hand: ``W2 act(W1 u + b1) + b2``."""
    mid = net[1](u @ net[0].weight.T + net[0].bias)
    return mid @ net[2].weight.T + net[2].bias


def _by_hand(block: InvertibleModule, e: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The MAD-X / NICE coupling (and the Glow one) written out from the formulas."""
    a, b = e[..., :block.d1], e[..., block.d1:]
    if not block.glow:
        if reverse:  # e2 = o2 - G(o1); e1 = o1 - F(e2)
            b = b - _mlp(block.G, a)
            return torch.cat([a - _mlp(block.F, b), b], -1)
        a = a + _mlp(block.F, b)  # o1 = e1 + F(e2); o2 = e2 + G(o1)
        return torch.cat([a, b + _mlp(block.G, a)], -1)

    def st(net: nn.Sequential, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = _mlp(net, u).chunk(2, -1)
        c = block.clamp
        return torch.exp(c * 2 / math.pi * torch.atan(s / c)), t
    if reverse:
        sc, t = st(block.G, a)
        b = (b - t) / sc
        sc, t = st(block.F, b)
        return torch.cat([(a - t) / sc, b], -1)
    sc, t = st(block.F, b)
    a = sc * a + t
    sc, t = st(block.G, a)
    return torch.cat([a, sc * b + t], -1)


def _random_block(coupling: str, dim: int, reduction: float, std: float,
                  dtype: torch.dtype = torch.float32) -> InvertibleModule:
    block = InvertibleModule(dim, ak.InvertibleAdapter(coupling=coupling, reduction=reduction),
                             torch.empty(0, dtype=dtype))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return block


@pytest.mark.parametrize("coupling", ["nice", "glow"])
@pytest.mark.parametrize(("dim", "reduction"), [(32, 2), (33, 3), (2, 1)])
def test_inverse_undoes_the_block(coupling: str, dim: int, reduction: float) -> None:
    block = _random_block(coupling, dim, reduction, std=0.2)
    e = torch.randn(3, 5, dim, generator=torch.Generator().manual_seed(1))
    o = block.forward_block(e)
    assert (o - e).abs().max() > 0.2, "the random block should be far from the identity"
    torch.testing.assert_close(block.inverse(o), e, atol=1e-5, rtol=0)
    torch.testing.assert_close(block.forward_block(block.inverse(e)), e, atol=1e-5, rtol=0)
    torch.testing.assert_close(o, _by_hand(block, e))
    torch.testing.assert_close(block.inverse(e), _by_hand(block, e, reverse=True))


@pytest.mark.parametrize("coupling", ["nice", "glow"])
def test_inverse_is_exact_algebra_far_from_the_identity(coupling: str) -> None:
    """Large weights make outputs of size 10-100 (Glow scales down to exp(-5)), where fp32 keeps
    too few digits to undo them; in fp64 the inverse is exact to rounding."""
    block = _random_block(coupling, 32, 2, std=0.5, dtype=torch.float64)
    e = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    o = block.forward_block(e)
    assert (o - e).abs().max() > 10
    torch.testing.assert_close(block.inverse(o), e, atol=1e-9, rtol=0)


def test_a_fresh_block_is_exactly_the_identity_both_ways() -> None:
    for coupling in ("nice", "glow"):
        block = InvertibleModule(32, ak.InvertibleAdapter(coupling=coupling), torch.empty(0))
        e = torch.randn(2, 4, 32)
        assert torch.equal(block.forward_block(e), e) and torch.equal(block.inverse(e), e)


def _tied_llama() -> nn.Module:
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(**{**_DEC, "tie_word_embeddings": True})).eval()


def _bert_mlm() -> nn.Module:
    torch.manual_seed(0)
    return T.BertForMaskedLM(T.BertConfig(**_ENC)).eval()


TIED = {  # model, word embedding path, tied head path
    "gpt2": (lambda: build("gpt2"), "transformer.wte", "lm_head"),
    "llama-tied": (_tied_llama, "model.embed_tokens", "lm_head"),
    "bert-mlm": (_bert_mlm, "bert.embeddings.word_embeddings", "cls.predictions.decoder"),
}


def test_sites_follow_the_tied_head() -> None:
    for name, (make, emb, head) in TIED.items():
        kit = ak.AdapterKit(make())
        kit.add("a", ak.InvertibleAdapter())
        assert [(s.host, s.role) for s in kit.record("a").sites] == [
            (emb, "embed"), (head, "inverse")], name
        kit.add("b", ak.InvertibleAdapter(inverse=False))
        assert [s.host for s in kit.record("b").sites] == [emb]
    for family, emb in (("llama", "model.embed_tokens"),  # tie_word_embeddings=False
                        ("bert", "bert.embeddings.word_embeddings")):  # a classifier
        kit = ak.AdapterKit(build(family))
        kit.add("a", ak.InvertibleAdapter())
        assert [s.host for s in kit.record("a").sites] == [emb]


@pytest.mark.parametrize("family", ["vit", "mlp"])
def test_models_without_a_word_embedding_are_refused(family: str) -> None:
    kit = ak.AdapterKit(build(family))
    with pytest.raises(ak.TargetError, match="InvertibleAdapter needs"):
        kit.add("a", ak.InvertibleAdapter())
    assert kit.names == []


@pytest.mark.parametrize("coupling", ["nice", "glow"])
@pytest.mark.parametrize("name", list(TIED))
def test_tied_head_logits_are_the_head_on_the_inverse(name: str, coupling: str) -> None:
    make, emb_path, head_path = TIED[name]
    model = make()
    kit = ak.AdapterKit(model)
    kit.add("a", ak.InvertibleAdapter(coupling=coupling))
    perturb(kit, "a", std=0.3)
    kit.activate("a")
    emb, head = model.get_submodule(emb_path), model.get_submodule(head_path)
    block = kit.record("a").modules[emb_path]
    seen: dict[str, torch.Tensor] = {}
    # registered after the kit's hooks: sees the adapted embedding, and the head's own input
    emb.register_forward_hook(lambda m, a, out: seen.__setitem__("embedded", out))
    head.register_forward_pre_hook(lambda m, a: seen.__setitem__("hidden", a[0]))
    ids = torch.randint(5, V, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        want_emb = _by_hand(block, F.embedding(ids, emb.weight))
        want = F.linear(_by_hand(block, seen["hidden"], reverse=True), head.weight, head.bias)
        plain = F.linear(seen["hidden"], head.weight, head.bias)
    torch.testing.assert_close(seen["embedded"], want_emb)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
    assert (logits - plain).abs().max() > 1e-3, "the inverse changed nothing"


def test_parameters_live_once_at_the_embedding(tmp_path) -> None:
    model = build("gpt2")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.InvertibleAdapter())
    block, inverse = kit.record("a").modules["transformer.wte"], kit.record("a").modules["lm_head"]
    assert isinstance(inverse, InverseModule) and inverse.block is block
    assert list(inverse.parameters()) == []
    assert [id(p) for p in kit.parameters("a")] == [id(p) for p in block.parameters()]
    perturb(kit, "a")
    kit.save("a", tmp_path / "a")
    from safetensors.torch import load_file

    saved = load_file(next((tmp_path / "a").glob("*.safetensors")))
    assert saved and all(k.startswith("transformer.wte.") for k in saved)
    twin = copy.deepcopy(model)
    rec = ak.AdapterKit(twin).record("a")
    assert rec.modules["lm_head"].block is rec.modules["transformer.wte"]
    assert rec.modules["transformer.wte"] is not block
    kit2 = ak.AdapterKit(build("gpt2"))
    kit2.load(tmp_path / "a")
    rec = kit2.record("a")
    assert rec.modules["lm_head"].block is rec.modules["transformer.wte"]


def _route_matches_alone(family: str, configs: dict) -> None:
    model = build(family)
    kit = ak.AdapterKit(model)
    for i, (name, config) in enumerate(configs.items()):
        kit.add(name, config)
        perturb(kit, name, std=0.15, seed=i)
    entries = [*configs, "__base__", next(iter(configs))]
    ids = torch.randint(5, V, (len(entries), 6), generator=torch.Generator().manual_seed(3))
    x = {"input_ids": ids}
    alone = []
    for i, entry in enumerate(entries):
        kit.activate(None if entry == "__base__" else entry)
        alone.append(run(model, family, {"input_ids": ids[i:i + 1]}))
    kit.activate(ak.Route(entries))
    torch.testing.assert_close(run(model, family, x), torch.cat(alone), atol=2e-5, rtol=1e-5)


def test_invertible_route_equals_each_example_alone() -> None:
    _route_matches_alone("gpt2", {"nice": ak.InvertibleAdapter(),
                                  "glow": ak.InvertibleAdapter(coupling="glow")})


def test_invertible_config_errors() -> None:
    for kw in ({"coupling": "real-nvp"}, {"reduction": 0}, {"non_linearity": "swishy"},
               {"inverse": "yes"}, {"clamp": -1.0}):
        with pytest.raises(ak.ConfigError, match="InvertibleAdapter"):
            ak.InvertibleAdapter(**kw)


# -- Hydra -------------------------------------------------------------------------------------


def _one_layer(kind: str) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    # Conv1D(nf = out, nx = in) stores its weight as (in, out)
    layer = Conv1D(5, 6) if kind == "conv1d" else nn.Linear(6, 5, bias=kind == "linear")
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    return nn.Sequential(layer)


def _hydra_by_hand(layer: nn.Module, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``h + s_p B_p A_p x + s_s B_s A_s h`` with ``h = W x + b``, from the formulas."""
    w = layer.weight if isinstance(layer, nn.Linear) else layer.weight.T  # (out, in)
    h = x @ w.T + (layer.bias if layer.bias is not None else 0)
    par = x @ mod.par_A.T @ mod.par_B.T
    seq = h @ mod.seq_A.T @ mod.seq_B.T
    return h + mod.scale_parallel * par + mod.scale_sequential * seq


KINDS = ["linear", "conv1d", "linear-nobias"]
CONFIG = ak.Hydra(r=2, r_sequential=3, alpha=5, targets=("0",))


@pytest.mark.parametrize("kind", KINDS)
def test_hydra_output_is_the_hand_computation(kind: str) -> None:
    model = _one_layer(kind)
    kit = ak.AdapterKit(model)
    kit.add("a", CONFIG)
    mod = kit.record("a").modules["0"]
    assert (mod.scale_parallel, mod.scale_sequential) == (2.5, 5 / 3)
    x = torch.randn(4, 3, 6)
    with torch.no_grad():
        base = model(x)
    kit.activate("a")
    with torch.no_grad():
        assert torch.equal(model(x), base)  # B_p and B_s start at zero
    perturb(kit, "a", std=0.5)
    with torch.no_grad():
        out, want = model(x), _hydra_by_hand(model[0], mod, x)
    torch.testing.assert_close(out, want)
    assert (out - base).abs().max() > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_hydra_merge_is_exact_including_the_bias(kind: str) -> None:
    model = _one_layer(kind)
    layer = model[0]
    w0 = layer.weight.detach().clone()
    b0 = None if layer.bias is None else layer.bias.detach().clone()
    kit = ak.AdapterKit(model)
    kit.add("a", CONFIG)
    perturb(kit, "a", std=0.5)
    kit.activate("a")
    mod = kit.record("a").modules["0"]
    x = torch.randn(4, 3, 6)
    with torch.no_grad():
        want = model(x)
        kit.merge("a")
        merged = model(x)
    torch.testing.assert_close(merged, want, atol=1e-5, rtol=0)
    w = w0 if kind != "conv1d" else w0.T  # (out, in)
    seq = mod.scale_sequential * mod.seq_B @ mod.seq_A
    dw = mod.scale_parallel * mod.par_B @ mod.par_A + seq @ w
    new_w = layer.weight if kind != "conv1d" else layer.weight.T
    torch.testing.assert_close(new_w.detach(), w + dw.detach())
    if b0 is not None:
        torch.testing.assert_close(layer.bias.detach(), b0 + (seq @ b0).detach())
    kit.unmerge()
    torch.testing.assert_close(layer.weight.detach(), w0, atol=1e-6, rtol=0)
    if b0 is not None:
        torch.testing.assert_close(layer.bias.detach(), b0, atol=1e-6, rtol=0)


def test_hydra_after_lora_in_a_stack_merges_in_stack_order() -> None:
    """The sequential branch reads the host output, LoRA's delta included: merging LoRA and
    then Hydra gives the Stack's outputs."""
    model = build("gpt2")  # Conv1D hosts with biases
    kit = ak.AdapterKit(model)
    kit.add("lora", ak.LoRA(r=2, targets=("attn.out",)))
    kit.add("hydra", ak.Hydra(r=2, targets=("attn.out",)))
    perturb(kit, "lora", std=0.1, seed=1)
    perturb(kit, "hydra", std=0.1, seed=2)
    kit.activate(["lora", "hydra"])
    x = inputs_for("gpt2")
    with torch.no_grad():
        want = run(model, "gpt2", x)
        kit.merge("lora")
        kit.merge("hydra")
        got = run(model, "gpt2", x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_hydra_route_equals_each_example_alone() -> None:
    _route_matches_alone("llama", {"a": ak.Hydra(r=2), "b": ak.Hydra(r=4, r_sequential=1),
                                   "lora": ak.LoRA(r=2, targets=("attn.out",))})


def test_hydra_config_errors() -> None:
    for kw in ({"r": 0}, {"r_sequential": 0}, {"r": 1.5}, {"alpha": 0}, {"dropout": 1.0},
               {"targets": ()}):
        with pytest.raises(ak.ConfigError, match=r"Hydra\.|targets"):
            ak.Hydra(**kw)
