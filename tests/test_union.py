"""Method unions (MethodUnion, MAM, UniPELT): equal to their members run together, gates where
the paper puts them, merging only when it can, clear refusals. The shared invariants run on the
union rows of ``tests/cases.py``."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

import adapterkit as ak
from adapterkit.core.base import AdapterModule
from adapterkit.methods.configs import config_from_dict, config_to_dict
from adapterkit.methods.union_modules import GatedModule, GatedPrefix, PrefixGate, UnionModule

from .helpers import perturb
from .models import MODELS, build, inputs_for, run


def _parts(module: AdapterModule) -> list[AdapterModule]:
    """The member modules of a union at one host, gates taken off."""
    parts = list(module.parts) if isinstance(module, UnionModule) else [module]
    return [p.inner if isinstance(p, (GatedModule, GatedPrefix)) else p
            for p in parts if not isinstance(p, PrefixGate)]


def _copy_members(kit: ak.AdapterKit, union: str, names: list[str]) -> None:
    """Give the union's member modules the weights of the separately added adapters ``names``
    (members in the same order)."""
    with torch.no_grad():
        for host, module in kit.record(union).modules.items():
            sources = [kit.record(n).modules[host] for n in names if host in kit.record(n).modules]
            parts = _parts(module)
            assert len(parts) == len(sources)
            for part, source in zip(parts, sources):
                part.load_state_dict(source.state_dict())


def _lora_targets(family: str) -> tuple[str, ...]:
    return MODELS[family].lora_targets or ("attn.q", "attn.v")


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2", "vit"])
def test_ungated_union_equals_its_members_stacked(family: str) -> None:
    lora = ak.LoRA(r=4, alpha=8, targets=_lora_targets(family))
    bottleneck = ak.Bottleneck(reduction=4, targets=MODELS[family].bottleneck_targets)
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("l", lora)
    kit.add("b", bottleneck)
    kit.add("u", ak.MethodUnion((lora, bottleneck)))
    perturb(kit, "l", seed=1)
    perturb(kit, "b", seed=2)
    _copy_members(kit, "u", ["l", "b"])
    x = inputs_for(family)
    base = run(model, family, x)
    kit.activate(["l", "b"])
    want = run(model, family, x)
    kit.activate("u")
    got = run(model, family, x)
    assert not torch.allclose(want, base)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # one module per member and host: the union's parameter count is the members' sum
    assert kit.summary()[2]["trainable"] == kit.summary()[0]["trainable"] + kit.summary()[1]["trainable"]


@pytest.mark.parametrize(("family", "lora_at", "bottleneck_at"), [
    ("bert", "ffn.out", r".*layer\.\d+\.output\.dense"), ("mlp", "[02]", "[02]")])
def test_members_at_one_host_add_their_deltas(family: str, lora_at: str, bottleneck_at: str) -> None:
    """LoRA and a series bottleneck at the same hosts: both read the host's own output, so the
    union is Average(weights 1, 1) of the two, not their Stack."""
    lora = ak.LoRA(r=4, alpha=8, targets=(lora_at,))
    bottleneck = ak.Bottleneck(reduction=4, targets=(bottleneck_at,))
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("l", lora)
    kit.add("b", bottleneck)
    kit.add("u", ak.MethodUnion((lora, bottleneck)))
    modules = kit.record("u").modules
    assert len(modules) == 2 and all(isinstance(m, UnionModule) for m in modules.values())
    perturb(kit, "l", seed=1)
    perturb(kit, "b", seed=2)
    _copy_members(kit, "u", ["l", "b"])
    x = inputs_for(family)
    kit.activate(ak.Average("l", "b", weights=(1.0, 1.0)))
    want = run(model, family, x)
    kit.activate(["l", "b"])
    stacked = run(model, family, x)
    kit.activate("u")
    got = run(model, family, x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(got, stacked, atol=1e-4)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_constant_gates_scale_every_member(family: str) -> None:
    """Gates with zero weights and bias b are the constant sigmoid(b): the gated UniPELT then
    equals the ungated one with LoRA's B, the adapter's up projection and the prefixes (keys and
    values) scaled by sigmoid(b). This pins the gate of every member to its delta."""
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("g", ak.UniPELT(r=4, alpha=8, num_tokens=3, reduction=4))
    kit.add("p", ak.UniPELT(r=4, alpha=8, num_tokens=3, reduction=4, gated=False))
    perturb(kit, "p", seed=3)
    g = torch.sigmoid(torch.tensor(0.3)).item()
    with torch.no_grad():
        for host, module in kit.record("p").modules.items():
            for part, source in zip(_parts(kit.record("g").modules[host]), _parts(module)):
                part.load_state_dict(source.state_dict())
        gates = [m.gate for module in kit.record("g").modules.values() for m in module.modules()
                 if isinstance(m, (GatedModule, PrefixGate))]
        per_layer = 3 if family == "gpt2" else 4  # LoRA at q and v (one c_attn on gpt2), prefix, adapter
        assert len(gates) == per_layer * model.config.num_hidden_layers
        for gate in gates:
            gate.weight.zero_()
            gate.bias.fill_(0.3)
        for module in kit.record("p").modules.values():
            for name, t in module.named_parameters():
                if name.endswith(("lora_B", "up.weight", "up.bias", "prefix")):
                    t.mul_(g)
    x = inputs_for(family)
    kit.activate("p")
    want = run(model, family, x)
    kit.activate("g")
    torch.testing.assert_close(run(model, family, x), want, atol=1e-5, rtol=0)


def test_prefix_gate_reads_the_first_attention_input_once_per_sequence() -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.UniPELT(r=4, alpha=8, num_tokens=3, reduction=4))
    perturb(kit, "a", std=0.5)
    kit.activate("a")
    layers = model.model.layers
    seen: dict[int, torch.Tensor] = {}
    handles = [layer.self_attn.q_proj.register_forward_pre_hook(
        lambda m, args, i=i: seen.__setitem__(i, args[0].detach())) for i, layer in enumerate(layers)]
    prefix = next(m for m in kit.record("a").modules.values() if isinstance(m, GatedPrefix))
    table = prefix.inner.prefix.detach().view(3, 2 * len(layers), prefix.inner.kv_heads, -1)
    ids = inputs_for("llama")["input_ids"]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        first = [(cache.layers[i].keys[:, :, :3].clone(), cache.layers[i].values[:, :, :3].clone())
                 for i in range(len(layers))]
        for i in range(len(layers)):
            gate = kit.record("a").modules[f"model.layers.{i}.self_attn.q_proj"].parts[1].gate
            g = torch.sigmoid(gate(seen[i][:, 0]))[:, :, None, None]  # (B, 1, 1, 1)
            assert not torch.allclose(g[0], g[1])
            keys, values = table[:, 2 * i].transpose(0, 1), table[:, 2 * i + 1].transpose(0, 1)
            torch.testing.assert_close(first[i][0], g * keys[None], atol=1e-6, rtol=0)
            torch.testing.assert_close(first[i][1], g * values[None], atol=1e-6, rtol=0)
        # a decoding step reuses the cached gated prefix: it is not scaled again
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
        for i in range(len(layers)):
            assert torch.equal(cache.layers[i].keys[:, :, :3], first[i][0])
    for handle in handles:
        handle.remove()


def test_gates_are_adapter_parameters_and_get_gradients() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.UniPELT(r=4, alpha=8, num_tokens=3, reduction=4))
    perturb(kit, "a")
    params = kit.train("a")
    gates = [p for m in model.modules() if isinstance(m, (GatedModule, PrefixGate))
             for p in m.gate.parameters()]
    assert len(gates) == 2 * 4 * model.config.num_hidden_layers  # q, v, prefix, adapter
    assert {id(p) for p in gates} <= {id(p) for p in params}
    model.train()
    run(model, "bert", inputs_for("bert")).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gates)


def test_merge_only_when_every_member_merges_and_no_gates() -> None:
    members = (ak.LoRA(r=2), ak.IA3())
    kit = ak.AdapterKit(build("llama"))
    kit.add("m", ak.MethodUnion(members))
    kit.add("g", ak.MethodUnion(members, gated=True))
    kit.add("r", ak.MethodUnion((ak.LoRA(r=2), ak.Bottleneck())))
    assert kit.record("m").spec.mergeable and kit.record("m").spec.kind.value == "weight_delta"
    kit.merge("m")
    with pytest.raises(ak.NotMergeableError, match=r"gated union.*cannot be merged"):
        kit.merge("g")
    with pytest.raises(ak.NotMergeableError, match=r"\['lora', 'bottleneck'\], not all.*cannot be merged"):
        kit.merge("r")


def test_route_refuses_unions_and_other_blocks_run_them() -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("u", ak.MethodUnion((ak.LoRA(r=2), ak.Bottleneck(reduction=4))))
    kit.add("l", ak.LoRA(r=2))
    perturb(kit, "u")
    with pytest.raises(ak.CompositionError, match=r"\['union'\] do not support per-example routing"):
        kit.activate(ak.Route(["u", "l"]))
    x = inputs_for("llama")
    kit.activate("u")
    alone = run(model, "llama", x)
    kit.activate(ak.Average("u", "l", weights=(1.0, 0.0)))
    torch.testing.assert_close(run(model, "llama", x), alone, atol=1e-6, rtol=0)
    kit.add("p", ak.MAM(num_tokens=2, reduction=4))
    with pytest.raises(ak.CompositionError, match="prompt/prefix"):
        kit.activate(ak.Average("p", "l"))


def test_presets_round_trip_and_follow_the_papers() -> None:
    mam, uni = ak.MAM(), ak.UniPELT()
    for config in (mam, uni, ak.UniPELT(gated=False), ak.MAM(num_tokens=5, scaling=2.0)):
        back = config_from_dict(json.loads(json.dumps(config_to_dict(config))))
        assert back == config and type(back.members) is tuple
        assert [type(m) for m in back.members] == [type(m) for m in config.members]
    prefix, adapter = mam.members
    assert (prefix.num_tokens, adapter.mode, adapter.placement) == (30, "parallel", "ffn")
    assert adapter.scaling == 4.0
    assert adapter.reduction == 2 and not mam.gated  # width 512 at d_model 1024
    lora, prefix, adapter = uni.members
    assert uni.gated and (lora.r, lora.alpha, lora.targets) == (8, 16, ("attn.q", "attn.v"))
    assert prefix.num_tokens == 10 and (adapter.mode, adapter.placement, adapter.reduction) == (
        "series", "ffn", 16)


@pytest.mark.parametrize(("members", "gated", "match"), [
    ((ak.LoRA(),), False, "two or more"),
    ((ak.LoRA(), ak.MethodUnion((ak.IA3(), ak.Bottleneck()))), False, "cannot be unions"),
    ((ak.LoRA(), ak.Fusion(adapters=("a", "b"))), False, "fusion layer"),
    ((ak.PrefixTuning(), ak.PromptTuning(), ak.LoRA()), False, "at most one prompt or prefix"),
    ((ak.PromptTuning(), ak.LoRA()), True, "prompt tuning has no gate"),
    ((ak.LoRA(), ak.LoRA()), False, "more than once"),
    ((ak.LoRA(), {"method": "lora"}), False, "must be method configs"),
    ((ak.LoRA(), ak.IA3()), 1, "gated must be a bool"),
])
def test_bad_unions_raise(members, gated, match) -> None:
    with pytest.raises(ak.ConfigError, match=match):
        ak.MethodUnion(members, gated=gated)


def test_members_reading_different_inputs_at_one_host_raise() -> None:
    """A parallel adapter reads the FFN input, LoRA at the FFN output its own input."""
    kit = ak.AdapterKit(build("bert"))
    union = ak.MethodUnion((ak.LoRA(targets=("ffn.out",)), ak.Bottleneck(mode="parallel")))
    with pytest.raises(ak.ConfigError, match="read different inputs"):
        kit.add("u", union)
    assert kit.names == []
