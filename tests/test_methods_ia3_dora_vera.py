"""Behaviour of IA3, DoRA and VeRA beyond the shared invariants: validation, bias merging,
merge stacking, and what VeRA saves."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.io import WEIGHTS_FILE

from .helpers import perturb
from .models import build, inputs_for, run


def test_registered_and_mergeable() -> None:
    info = {m.name: m for m in ak.methods()}
    for name, cls in (("ia3", "IA3"), ("dora", "DoRA"), ("vera", "VeRA")):
        assert info[name].config == cls and info[name].mergeable
        assert info[name].kind == "weight_delta"


@pytest.mark.parametrize("make", [lambda: ak.DoRA(r=0), lambda: ak.DoRA(dropout=1.0),
                                  lambda: ak.VeRA(r=0), lambda: ak.VeRA(d_initial="x"),
                                  lambda: ak.VeRA(projection_prng_key=1.5),
                                  lambda: ak.IA3(targets=())])
def test_bad_configs(make) -> None:
    with pytest.raises(ak.ConfigError):
        make()


@pytest.mark.parametrize("config", [ak.IA3(targets=("embed",), feedforward=()),
                                    ak.DoRA(targets=("embed",)), ak.VeRA(targets=("embed",))])
def test_embedding_targets_are_refused(config) -> None:
    with pytest.raises(ak.TargetError, match="supports Linear and Conv1D"):
        ak.AdapterKit(build("llama")).add("a", config)


def test_ia3_feedforward_must_be_targets() -> None:
    kit = ak.AdapterKit(build("mlp"))
    with pytest.raises(ak.TargetError, match=r"subset of IA3\.targets"):
        kit.add("a", ak.IA3(targets=("0",), feedforward=("2",)))
    assert kit.names == []


def test_ia3_random_init_is_not_identity() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.IA3(init_ones=False))
    offsets = torch.cat([p.detach() for p in kit.parameters("a")])
    assert abs(offsets.mean().item() + 1) < 0.2 and 0.7 < offsets.std().item() < 1.3


def test_ia3_merge_scales_the_bias_and_unmerge_restores_it() -> None:
    model = build("bert")
    key = model.bert.encoder.layer[0].attention.self.key
    w0, b0 = key.weight.detach().clone(), key.bias.detach().clone()
    kit = ak.AdapterKit(model)
    kit.add("a", ak.IA3())
    perturb(kit, "a", std=0.5)
    module = kit.record("a").modules["bert.encoder.layer.0.attention.self.key"]
    scale = module.scaling.detach()
    kit.merge("a")
    torch.testing.assert_close(key.bias, scale * b0, atol=1e-7, rtol=0)
    torch.testing.assert_close(key.weight, scale[:, None] * w0, atol=1e-7, rtol=0)
    kit.unmerge("a")
    torch.testing.assert_close(key.bias, b0, atol=1e-7, rtol=0)
    torch.testing.assert_close(key.weight, w0, atol=1e-7, rtol=0)
    assert module.merge_stash is None


def test_stacked_merges_on_shared_hosts() -> None:
    """DoRA, LoRA, VeRA and IA3 (output scaling) on the same hosts, merged in activation order:
    the merged weights give the unmerged outputs, and unmerging restores the base weights.

    DoRA (and IA3's input scaling) read the host's weight, not the deltas of other unmerged
    adapters on that host, so they come first; LoRA and VeRA add, and IA3's output scaling scales
    everything before it, exactly as merging them in turn does."""
    family = "llama"
    model = build(family)
    x = inputs_for(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kit = ak.AdapterKit(model)
    names = ("dora", "lora", "vera", "ia3")
    configs = (ak.DoRA(r=2), ak.LoRA(r=2), ak.VeRA(r=4),
               ak.IA3(targets=("attn.q", "attn.v"), feedforward=()))
    for name, config in zip(names, configs):
        kit.add(name, config)
        perturb(kit, name, std=0.1, seed=len(kit.names))
    kit.activate(names)
    want = run(model, family, x)
    for name in names:
        kit.merge(name)
        torch.testing.assert_close(run(model, family, x), want, atol=1e-5, rtol=0)
    kit.activate(None)
    torch.testing.assert_close(run(model, family, x), want, atol=1e-5, rtol=0)
    kit.unmerge()
    for key, value in model.state_dict().items():
        if key in before:
            torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("save_projection", [True, False])
def test_vera_saves_projections_only_when_asked(save_projection: bool, tmp_path) -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.VeRA(r=4, save_projection=save_projection))
    kit.save("a", tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / WEIGHTS_FILE))
    modules = kit.record("a").modules
    for host, module in modules.items():
        assert (f"{host}.vera_A" in tensors) is save_projection
        if save_projection:  # each site stores its own slice of the shared pair
            assert torch.equal(tensors[f"{host}.vera_A"], module.vera_A)
            assert torch.equal(tensors[f"{host}.vera_B"], module.vera_B)
    assert sum(k.endswith("lambda_b") for k in tensors) == len(modules)


def test_vera_load_refills_the_shared_projections(tmp_path) -> None:
    """Loaded projections land in the one shared pair (the views keep pointing into it)."""
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.VeRA(r=4))
    kit.save("a", tmp_path / "a")
    fresh = build("llama")
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "a")
    modules = list(kit2.record("a").modules.values())
    assert len({m.vera_A.untyped_storage().data_ptr() for m in modules}) == 1
    for m, n in zip(kit.record("a").modules.values(), modules):
        assert torch.equal(m.vera_A, n.vera_A) and torch.equal(m.vera_B, n.vera_B)
