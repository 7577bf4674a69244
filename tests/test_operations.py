"""kit.combine: exactness of cat/svd, agreement with the ops-level references, and bad input."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit import ops

from .helpers import hook_counts, perturb
from .models import build, inputs_for, run

W = {"a": 0.7, "b": -0.4}


def _two_loras(family: str, targets: tuple[str, ...] | None = None):
    model = build(family)
    kit = ak.AdapterKit(model)
    kw = {"targets": targets} if targets else {}
    kit.add("a", ak.LoRA(r=4, alpha=8, **kw))
    kit.add("b", ak.LoRA(r=2, alpha=3, use_rslora=True, **kw))
    perturb(kit, "a", std=0.3, seed=1)
    perturb(kit, "b", std=0.3, seed=2)
    return model, kit


def _folded(family: str, kit: ak.AdapterKit, weights: dict[str, float]) -> torch.nn.Module:
    """A fresh copy of the base with ``sum_i w_i * delta_i`` added to its weights."""
    ref = build(family)
    with torch.no_grad():
        for name, w in weights.items():
            for host, module in kit.record(name).modules.items():
                ref.get_submodule(host).weight.add_(w * module.delta_weight(kit.model.get_submodule(host)))
    return ref


def _deltas(kit: ak.AdapterKit, name: str) -> dict[str, torch.Tensor]:
    """Per-site (out, in) deltas ``scale * B @ A`` (the ops convention)."""
    return {h: m.scale * (m.lora_B @ m.lora_A.flatten(1)).detach()
            for h, m in kit.record(name).modules.items()}


@pytest.mark.parametrize(("family", "targets"), [
    ("bert", None), ("gpt2", None), ("mlp", ("0", "2")), ("bert", ("embed", "attn.q", "ffn.out"))])
def test_cat_equals_weighted_delta_sum(family: str, targets) -> None:
    model, kit = _two_loras(family, targets)
    x = inputs_for(family)
    want = run(_folded(family, kit, W), family, x)
    report = kit.combine("c", W, how="cat")
    assert report.exact and set(report.ranks.values()) == {6}
    assert kit.config("c").r == 6
    kit.activate("c")
    torch.testing.assert_close(run(model, family, x), want, atol=1e-5, rtol=0)


def test_svd_full_rank_is_exact_and_truncation_keeps_reported_energy() -> None:
    model, kit = _two_loras("bert")
    x = inputs_for("bert")
    want = run(_folded("bert", kit, W), "bert", x)
    full = kit.combine("full", W, how="svd")
    assert full.exact and full.min_energy == pytest.approx(1.0)
    kit.activate("full")
    torch.testing.assert_close(run(model, "bert", x), want, atol=1e-5, rtol=0)
    low = kit.combine("low", W, how="svd", rank=2)
    assert not low.exact and set(low.ranks.values()) == {2}
    exact = {h: W["a"] * d for h, d in _deltas(kit, "a").items()}
    for h, d in _deltas(kit, "b").items():
        exact[h] = exact[h] + W["b"] * d
    for host, module in kit.record("low").modules.items():
        kept = module.delta_weight(model.get_submodule(host)).detach()
        err = (kept - exact[host]).pow(2).sum() / exact[host].pow(2).sum()
        assert float(err) == pytest.approx(1 - low.energy[host], abs=1e-5)
    by_energy = kit.combine("e90", W, how="svd", energy=0.9)
    assert all(e >= 0.9 - 1e-6 for e in by_energy.energy.values())


def test_per_site_ranks_save_and_load(tmp_path) -> None:
    model, kit = _two_loras("bert")
    report = kit.combine("e", W, how="svd", energy=0.8)
    assert kit.config("e").rank_pattern or len(set(report.ranks.values())) == 1
    kit.activate("e")
    x = inputs_for("bert")
    want = run(model, "bert", x)
    kit.save("e", tmp_path / "e")
    fresh = build("bert")
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "e")
    kit2.activate("e")
    assert torch.equal(run(fresh, "bert", x), want)
    ranks = {h: m.lora_A.shape[0] for h, m in kit2.record("e").modules.items()}
    assert ranks == report.ranks


@pytest.mark.parametrize(("how", "reference"), [
    ("task_arithmetic", lambda d, w: ops.combine_task_arithmetic(d, w)),
    ("ties", lambda d, w: ops.ties(d, w, 0.3)),
    ("dare_linear", lambda d, w: ops.dare_linear(d, w, 0.6, seed=5)),
    ("dare_ties", lambda d, w: ops.dare_ties(d, w, 0.6, seed=5)),
])
def test_lora_delta_merges_match_ops(how: str, reference) -> None:
    model, kit = _two_loras("bert")
    density = 0.3 if how == "ties" else 0.6
    report = kit.combine("m", W, how=how, density=density, seed=5)
    assert report.exact == (how == "task_arithmetic")
    want = reference([_deltas(kit, "a"), _deltas(kit, "b")], list(W.values()))
    for host, module in kit.record("m").modules.items():
        got = module.delta_weight(model.get_submodule(host))
        torch.testing.assert_close(got, want[host], atol=1e-5, rtol=0)
    truncated = kit.combine("m2", W, how=how, density=density, seed=5, rank=3)
    assert set(truncated.ranks.values()) == {3} and truncated.min_energy < 1


@pytest.mark.parametrize("how", ["linear", "ties", "dare_linear"])
def test_parameter_merges_of_bottlenecks_match_ops(how: str) -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    for name, seed in (("a", 1), ("b", 2)):
        kit.add(name, ak.Bottleneck(reduction=4, placement="both"))
        perturb(kit, name, seed=seed)
    kit.combine("m", W, how=how, density=0.5, seed=3)
    states = [{f"{h}.{k}": t for h, m in kit.record(n).modules.items()
               for k, t in m.state_dict().items()} for n in W]
    want = {"linear": lambda: ops.combine_linear(states, list(W.values())),
            "ties": lambda: ops.ties(states, list(W.values()), 0.5),
            "dare_linear": lambda: ops.dare_linear(states, list(W.values()), 0.5, seed=3)}[how]()
    for host, module in kit.record("m").modules.items():
        for key, t in module.state_dict().items():
            assert torch.equal(t, want[f"{host}.{key}"]), (host, key)


def test_linear_lora_averages_factors() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4))
    kit.add("b", ak.LoRA(r=4, dropout=0.1))  # dropout only matters in training
    perturb(kit, "a", seed=1)
    perturb(kit, "b", seed=2)
    report = kit.combine("m", {"a": 0.5, "b": 0.5}, how="linear")
    assert not report.exact
    for host, module in kit.record("m").modules.items():
        a, b = kit.record("a").modules[host], kit.record("b").modules[host]
        torch.testing.assert_close(module.lora_A, 0.5 * a.lora_A + 0.5 * b.lora_A)


def _snapshot(kit: ak.AdapterKit):
    return (kit.names, {k: v.clone() for k, v in kit.model.state_dict().items()},
            hook_counts(kit.model))


def _unchanged(kit: ak.AdapterKit, snap) -> bool:
    names, state, hooks = snap
    now = kit.model.state_dict()
    return (kit.names == names and now.keys() == state.keys()
            and all(torch.equal(now[k], state[k]) for k in state) and hook_counts(kit.model) == hooks)


@pytest.mark.parametrize(("setup", "call", "error", "match"), [
    ("mixed", lambda k: k.combine("c", {"a": 1, "bn": 1}, how="cat"), ak.CombineError,
     r"different methods: \{'a': 'lora', 'bn': 'bottleneck'\}"),
    ("mixed", lambda k: k.combine("c", {"bn": 1, "bn2": 1}, how="svd"), ak.CombineError,
     "LoRA adapters only"),
    ("ranks", lambda k: k.combine("c", {"a": 0.5, "r2": 0.5}, how="linear"), ak.CombineError,
     r"differ in r \(4 vs 2\).*how='cat' or 'svd'"),
    ("ranks", lambda k: k.combine("c", {"a": 1}, how="average"), ak.CombineError,
     r"unknown how='average'; use one of \['cat'"),
    ("ranks", lambda k: k.combine("c", {"a": 1, "nope": 1}), ak.AdapterNameError,
     "no adapter named 'nope'"),
    ("ranks", lambda k: k.combine("a", {"a": 1}), ak.AdapterNameError, "exists already"),
    ("ranks", lambda k: k.combine("c", {}), ak.CombineError, "non-empty"),
    ("ranks", lambda k: k.combine("c", {"a": "x"}), ak.CombineError, "must be numbers"),
    ("sites", lambda k: k.combine("c", {"a": 1, "ffn": 1}), ak.CombineError,
     "on different sites: only in 'a'.*attention.self.query"),
    ("mixed", lambda k: k.combine("c", {"bn": 1, "bn2": 1}, how="ties", rank=2), ak.CombineError,
     "LoRA results only"),
])
def test_bad_combinations_leave_the_kit_unchanged(setup: str, call, error, match: str) -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.add("a", ak.LoRA(r=4))
    if setup == "mixed":
        kit.add("bn", ak.Bottleneck(reduction=4))
        kit.add("bn2", ak.Bottleneck(reduction=4))
    elif setup == "ranks":
        kit.add("r2", ak.LoRA(r=2))
    else:
        kit.add("ffn", ak.LoRA(r=4, targets=("ffn.in",)))
    for name in kit.names:
        perturb(kit, name)
    snap = _snapshot(kit)
    with pytest.raises(error, match=match):
        call(kit)
    assert _unchanged(kit, snap)


def test_combined_bottleneck_needs_equal_configs() -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.add("a", ak.Bottleneck(reduction=4))
    kit.add("b", ak.Bottleneck(reduction=8))
    with pytest.raises(ak.CombineError, match=r"differ in reduction \(4 vs 8\)"):
        kit.combine("c", {"a": 0.5, "b": 0.5}, how="linear")
