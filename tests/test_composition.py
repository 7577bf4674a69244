"""Composition blocks against their parts computed by hand, on tiny bert, llama and gpt2.

References are forward hooks that apply the adapter modules' own ``delta`` directly at every
host (the kit is deactivated meanwhile), so they share nothing with the executor's nodes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

import adapterkit as ak
from adapterkit.compose.blocks import from_json, to_json

from .helpers import perturb
from .models import build, inputs_for, run
from .test_route import _alone, _batch, _kit

FAMILIES = ("bert", "llama", "gpt2")
TOL = {"atol": 2e-5, "rtol": 1e-5}
BNS = {"bn1": ak.Bottleneck(reduction=4, placement="both"),
       "bn2": ak.Bottleneck(reduction=4, placement="ffn", layer_norm=True, non_linearity="gelu")}
Fn = Callable[[dict, torch.Tensor, torch.Tensor, torch.nn.Module], torch.Tensor]


def by_hand(model: torch.nn.Module, kit: ak.AdapterKit, family: str, x: dict, fn: Fn) -> torch.Tensor:
    """Run with ``h <- fn(slot modules by name, h, host input, host)`` at every host."""
    kit.activate(None)
    handles = []
    for _, mod in model.named_modules():
        slot = mod._modules.get("adapterkit")
        if slot is not None:
            def hook(m, args, out, slot=slot):
                return fn(dict(slot.items()), out, args[0], m)
            handles.append(mod.register_forward_hook(hook))
    try:
        return run(model, family, x)
    finally:
        for handle in handles:
            handle.remove()


def _delta(mods: dict, name: str, h: torch.Tensor, x: torch.Tensor, host) -> torch.Tensor:
    return mods[name].delta(h, x, host) if name in mods else torch.zeros_like(h)


def _active(kit: ak.AdapterKit, setup, model, family: str, x: dict) -> torch.Tensor:
    kit.activate(setup)
    return run(model, family, x)


@pytest.mark.parametrize("family", FAMILIES)
def test_stack_of_bottlenecks_is_one_after_the_other(family: str) -> None:
    model, kit = _kit(family, BNS)
    x = inputs_for(family)

    def stack(mods, h, inp, host):
        for name in ("bn1", "bn2"):
            h = h + _delta(mods, name, h, inp, host)
        return h

    want = by_hand(model, kit, family, x, stack)
    torch.testing.assert_close(_active(kit, ak.Stack("bn1", "bn2"), model, family, x), want, **TOL)
    assert not torch.allclose(_active(kit, ak.Stack("bn2", "bn1"), model, family, x), want)


@pytest.mark.parametrize("family", FAMILIES)
def test_stack_of_loras_is_one_lora_with_the_summed_delta(family: str) -> None:
    model, kit = _kit(family, {"a": ak.LoRA(r=2, alpha=4), "b": ak.LoRA(r=3, alpha=1)})
    kit.add("ab", ak.LoRA(r=5, alpha=5))  # scale 1: B holds the scales
    with torch.no_grad():
        for host, m in kit.record("ab").modules.items():
            ma, mb = kit.record("a").modules[host], kit.record("b").modules[host]
            m.lora_A.copy_(torch.cat([ma.lora_A, mb.lora_A]))
            m.lora_B.copy_(torch.cat([ma.lora_B * ma.scale, mb.lora_B * mb.scale], 1))
    x = inputs_for(family)
    want = _active(kit, "ab", model, family, x)
    torch.testing.assert_close(_active(kit, ak.Stack("a", "b"), model, family, x), want, **TOL)
    torch.testing.assert_close(_active(kit, ak.Stack("b", "a"), model, family, x), want, **TOL)


def test_weight_deltas_run_before_residual_adapters_in_a_stack() -> None:
    family = "llama"
    model, kit = _kit(family, {"bn": ak.Bottleneck(reduction=4, placement="both"),
                               "lo": ak.LoRA(r=2, targets=("attn.out", "ffn.out"))})
    x = inputs_for(family)

    def stack(mods, h, inp, host):
        h = h + _delta(mods, "lo", h, inp, host)
        return h + _delta(mods, "bn", h, inp, host)

    want = by_hand(model, kit, family, x, stack)
    for order in (("bn", "lo"), ("lo", "bn")):
        torch.testing.assert_close(_active(kit, ak.Stack(*order), model, family, x), want, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_average_is_the_weighted_mean_of_deltas(family: str) -> None:
    model, kit = _kit(family, {**BNS, "lo": ak.LoRA(r=2)})
    x = inputs_for(family)
    # one adapter with weight 1 is that adapter (LoRA's fused add may round differently)
    assert torch.equal(_active(kit, ak.Average("bn1"), model, family, x),
                       _active(kit, "bn1", model, family, x))
    torch.testing.assert_close(_active(kit, ak.Average("lo"), model, family, x),
                               _active(kit, "lo", model, family, x), atol=1e-6, rtol=0)
    for weights in ((0.25, 1.5, -0.5), None):
        w = weights or (1 / 3,) * 3

        def average(mods, h, inp, host, w=w):
            return h + sum(wi * _delta(mods, n, h, inp, host) for n, wi in zip(("bn1", "bn2", "lo"), w))

        want = by_hand(model, kit, family, x, average)
        got = _active(kit, ak.Average("bn1", "bn2", "lo", weights=weights), model, family, x)
        torch.testing.assert_close(got, want, **TOL)


def _fused(f, h: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
    """The AdapterFusion formula written out: softmax over adapters of Q(h) . K(o_i)."""
    o = torch.stack(outs, -2)  # (..., n, d)
    q = h @ f.query.weight.T + f.query.bias
    k = o @ f.key.weight.T + f.key.bias
    v = o @ f.value.weight.T + f.value.bias
    a = torch.softmax(torch.einsum("...d,...nd->...n", q, k) / f.temperature, -1)
    return torch.einsum("...n,...nd->...d", a, v)


@pytest.mark.parametrize("family", FAMILIES)
def test_fuse_attends_over_adapter_outputs(family: str) -> None:
    model, kit = _kit(family, {**BNS, "lo": ak.LoRA(r=2, targets=("attn.out", "ffn.out"))})
    x = inputs_for(family)
    kit.add_fusion(ak.Fuse("bn1", name="one"))  # value starts as the identity: the adapter itself
    assert torch.equal(_active(kit, ak.Fuse("bn1", name="one"), model, family, x),
                       _active(kit, "bn1", model, family, x))
    fuse = ak.Fuse("bn1", ak.Stack("lo", "bn2"), name="f")
    kit.add_fusion(fuse, temperature=2.0)
    perturb(kit, "f", std=0.2, seed=3)

    def fused(mods, h, inp, host):
        if "f" not in mods:
            return h
        o1 = h + _delta(mods, "bn1", h, inp, host)
        o2 = h + _delta(mods, "lo", h, inp, host)
        o2 = o2 + _delta(mods, "bn2", o2, inp, host)
        return _fused(mods["f"], h, [o1, o2])

    want = by_hand(model, kit, family, x, fused)
    torch.testing.assert_close(_active(kit, fuse, model, family, x), want, **TOL)


def test_train_fusion_moves_only_fusion_parameters() -> None:
    family = "bert"
    model, kit = _kit(family, BNS)
    fuse = ak.Fuse("bn1", "bn2", name="f")
    setup = ak.Stack("bn1", fuse)  # bn1 also under the fusion: Stack(name, Fuse) is legal
    params = kit.train_fusion(setup)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert {id(p) for p in params} == {id(p) for p in kit.parameters("f")}
    assert kit.composition == setup and "f" in kit.active
    model.train()
    opt = torch.optim.Adam(params, lr=1e-2)
    x = inputs_for(family)
    for _ in range(3):
        loss = run(model, family, x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fusion_keys = {k for k in before if ".adapterkit.f." in k}
    moved = {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert moved and moved <= fusion_keys
    assert all(p.grad is None for n, p in model.named_parameters() if n not in fusion_keys)


@pytest.mark.parametrize("family", FAMILIES)
def test_split_runs_each_adapter_on_its_positions(family: str) -> None:
    model, kit = _kit(family, {"lo": ak.LoRA(r=2), "bn": BNS["bn1"]})
    x = inputs_for(family)

    def split(mods, h, inp, host, s=3):
        a = h[:, :s] + _delta(mods, "lo", h[:, :s], inp[:, :s], host)
        b = h[:, s:] + _delta(mods, "bn", h[:, s:], inp[:, s:], host)
        return torch.cat([a, b], 1)

    want = by_hand(model, kit, family, x, split)
    torch.testing.assert_close(_active(kit, ak.Split("lo", "bn", split_index=3), model, family, x),
                               want, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_split_equals_each_slice_alone(family: str) -> None:
    model, kit = _kit(family, {"lo": ak.LoRA(r=2), **BNS})
    batch = _batch(family)
    want = _alone(model, kit, family, batch, ["lo", "lo", ak.Stack("lo", "bn1"), "bn2", "bn2"])
    setup = ak.BatchSplit("lo", ak.Stack("lo", "bn1"), "bn2", batch_sizes=[2, 1, 2])
    torch.testing.assert_close(_active(kit, setup, model, family, batch), want, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_parallel_gives_each_adapter_output(family: str) -> None:
    model, kit = _kit(family, {"lo": ak.LoRA(r=2), **BNS})
    batch = _batch(family, n=3)
    children = ("lo", "bn1", ak.Stack("lo", "bn2"))
    want = [_active(kit, c, model, family, batch) for c in children]
    kit.activate(ak.Parallel(*children))
    out = model(**batch)
    assert out.logits.shape[0] == 3 * 3
    parts = kit.split_parallel(out)
    assert [type(p) for p in parts] == [type(out)] * 3
    for part, ref in zip(parts, want):
        torch.testing.assert_close(part.logits, ref, **TOL)
    if family == "llama":
        with pytest.raises(ak.CompositionError, match="generate"):
            model.generate(batch["input_ids"], max_new_tokens=2, pad_token_id=0)
    kit.activate(None)
    assert model(**batch).logits.shape[0] == 3


def test_illegal_nesting_and_combinations_raise() -> None:
    with pytest.raises(ak.CompositionError, match=r"Stack cannot hold Route.*only at the top level"):
        ak.Stack("a", ak.Route(["a", "b"]))
    with pytest.raises(ak.CompositionError, match="Route cannot hold Parallel"):
        ak.Route(["a", ak.Parallel("a", "b")])
    with pytest.raises(ak.CompositionError, match="Fuse cannot hold Fuse"):
        ak.Fuse("a", ak.Fuse("b", "c"))
    with pytest.raises(ak.CompositionError, match="Average needs at least 1"):
        ak.Average()
    with pytest.raises(ak.CompositionError, match="must be an adapter name or a block, got None"):
        ak.Split("a", None, 2)  # type: ignore[arg-type]
    with pytest.raises(ak.CompositionError, match="2 positive integer batch_sizes"):
        ak.BatchSplit("a", "b", batch_sizes=[2])
    with pytest.raises(ak.CompositionError, match="__base__"):
        ak.Stack("a", "__base__")
    _, kit = _kit("bert", {"a": ak.LoRA(r=2), "bn": BNS["bn1"]})
    with pytest.raises(ak.CompositionError, match=r"no fusion layer named 'f'.*add_fusion"):
        kit.activate(ak.Fuse("a", "bn", name="f"))
    kit.add_fusion(ak.Fuse("a", "bn", name="f"))
    with pytest.raises(ak.CompositionError, match="built for"):
        kit.activate(ak.Fuse("a", name="f"))
    with pytest.raises(ak.CompositionError, match="fusion layer: it runs only as Fuse"):
        kit.activate(ak.Stack("a", "f"))
    kit.activate(ak.Average("a", "bn"))
    for what in (kit.remove, kit.merge):
        with pytest.raises(ak.CompositionError, match="part of the active composition"):
            what("a")
    kit.activate(None)
    kit.merge("a")
    with pytest.raises(ak.CompositionError, match="merged into the base weights"):
        kit.activate(ak.Average("a", "bn"))
    kit.activate(["a", "bn"])  # a merged adapter in a plain Stack is fine: it is in the weights
    kit.remove("a")
    assert kit.active == ("bn",)


BLOCKS = [ak.Stack("a", ak.Fuse("b", ak.Stack("c", "d"), name="f")),
          ak.Average("a", ak.Split("b", "c", 4), weights=[0.25, 1.5]),
          ak.BatchSplit("a", ak.Average("b", "c"), batch_sizes=[3, 1]),
          ak.Parallel("a", ak.Stack("a", "b")),
          ak.Route(["a", "__base__", ak.Stack("a", "b"), ak.Fuse("a", "b")]), "a", None,
          ak.Stack("a", ak.Mixture("b", "c", router="sequence", top_k=1, name="m",
                                   balance="switch")),
          ak.Average("a", ak.Arrow("b", "c", top_k=2, temperature=0.5)),
          ak.Route(["a", ak.Mixture("a", "b"), ak.Arrow("a", "b")])]


@pytest.mark.parametrize("value", BLOCKS, ids=repr)
def test_compositions_round_trip_through_json(value) -> None:
    data = json.loads(json.dumps(to_json(value)))
    assert from_json(data) == value
    assert hash(from_json(data)) == hash(value)


def test_save_setup_round_trips_bit_exactly(tmp_path) -> None:
    family = "llama"
    configs = {"lo": ak.LoRA(r=2), "bn": BNS["bn1"], "ia": ak.IA3()}
    model, kit = _kit(family, configs)
    kit.add_fusion(ak.Fuse("lo", "bn", name="f"))
    perturb(kit, "f", std=0.1, seed=4)
    setup = ak.Stack("ia", ak.Fuse("lo", "bn", name="f"))
    kit.activate(setup)
    x = inputs_for(family)
    want = run(model, family, x)
    kit.save_setup(tmp_path / "s")
    fresh = build(family)
    kit2 = ak.AdapterKit(fresh)
    assert kit2.load_setup(tmp_path / "s") == setup
    assert kit2.names == ["lo", "bn", "ia", "f"] and kit2.composition == setup
    assert torch.equal(run(fresh, family, x), want)
    # a broken setup leaves the model as it was
    (tmp_path / "s" / "f" / "adapter.safetensors").write_bytes(b"junk")
    kit3 = ak.AdapterKit(build(family))
    with pytest.raises(ak.LoadError):
        kit3.load_setup(tmp_path / "s")
    assert kit3.names == [] and kit3.composition is None
