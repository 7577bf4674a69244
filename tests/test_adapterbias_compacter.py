"""AdapterBias and Compacter specifics: the math, Compacter's shared rules and its size checks.
The shared invariants run on both through ``tests/cases.py``."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.methods.compacter import phm_weight

from .helpers import perturb
from .models import build, inputs_for, run


def test_adapterbias_delta_is_a_token_weighted_vector() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.AdapterBias())
    perturb(kit, "a")
    (host, module), *_ = kit.record("a").modules.items()
    h = torch.randn(2, 5, module.v.shape[0])
    want = (h @ module.alpha.weight.T + module.alpha.bias) * module.v  # (2, 5, 1) * (out,)
    torch.testing.assert_close(module.delta(h, h, model.get_submodule(host)), want)


def test_phm_weight_is_a_sum_of_kronecker_products() -> None:
    g = torch.Generator().manual_seed(0)
    n, p, q, r = 3, 2, 4, 2
    rule = torch.randn(n, n, n, generator=g)
    s, t = torch.randn(n, p, r, generator=g), torch.randn(n, q, r, generator=g)
    want = sum(torch.kron(rule[i], s[i] @ t[i].T) for i in range(n))
    torch.testing.assert_close(phm_weight(rule, s, t), want)


def _rules(kit: ak.AdapterKit, name: str) -> list[torch.Tensor]:
    return [m.rule for m in kit.record(name).modules.values()]


def test_shared_rule_is_one_parameter_counted_and_saved_once(tmp_path) -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.Compacter(reduction=4, placement="both"))
    rules = _rules(kit, "a")
    assert len(rules) == 4 and all(r is rules[0] for r in rules)
    assert sum(p is rules[0] for p in kit.parameters("a")) == 1
    assert sum(p is rules[0] for p in kit.train("a")) == 1
    perturb(kit, "a")
    kit.save("a", tmp_path / "a")
    from safetensors.torch import load_file

    saved = load_file(next((tmp_path / "a").glob("*.safetensors")))
    assert [k for k in saved if k.endswith("phm_rule")] == [
        f"{next(iter(kit.record('a').modules))}.phm_rule"]
    fresh = build("llama")
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "a")
    loaded = _rules(kit2, "a")
    assert all(r is loaded[0] for r in loaded) and torch.equal(loaded[0], rules[0])
    # gradients from every site reach the one shared tensor
    kit2.train("a")
    run(fresh, "llama", inputs_for("llama")).float().pow(2).mean().backward()
    assert loaded[0].grad is not None and loaded[0].grad.abs().sum() > 0


def test_unshared_rules_are_one_per_site() -> None:
    kit = ak.AdapterKit(build("llama"))
    kit.add("a", ak.Compacter(reduction=4, placement="both", shared_rule=False))
    rules = _rules(kit, "a")
    assert len({id(r) for r in rules}) == len(rules) == 4


def test_shared_rule_survives_deepcopy() -> None:
    import copy

    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.Compacter(reduction=4, placement="both"))
    kit2 = ak.AdapterKit(copy.deepcopy(model))
    rules, copied = _rules(kit, "a"), _rules(kit2, "a")
    assert all(r is copied[0] for r in copied) and copied[0] is not rules[0]


def test_two_compacter_adapters_do_not_share_rules() -> None:
    kit = ak.AdapterKit(build("llama"))
    kit.add("a", ak.Compacter(reduction=4))
    kit.add("b", ak.Compacter(reduction=4))
    assert _rules(kit, "a")[0] is not _rules(kit, "b")[0]


def test_compacter_sizes_must_divide_by_phm_dim() -> None:
    kit = ak.AdapterKit(build("llama"))  # hidden 32
    with pytest.raises(ak.ConfigError, match=r"width=1 not divisible by phm_dim=2"):
        kit.add("a", ak.Compacter(reduction=32, phm_dim=2))
    with pytest.raises(ak.ConfigError, match=r"in=32, width=8, out=32 not divisible by phm_dim=3"):
        kit.add("a", ak.Compacter(reduction=4, phm_dim=3))
    with pytest.raises(ak.ConfigError, match=r"width=2 not divisible by phm_dim=4"):
        kit.add("a", ak.Compacter(reduction=16, phm_dim=4))
    assert kit.names == []


@pytest.mark.parametrize(("kw", "match"), [
    ({"plus_plus": True, "placement": "both"}, "FFN-only"),
    ({"phm_dim": 0}, "phm_dim must be a positive integer"),
    ({"rank": 1.5}, "rank must be a positive integer"),
    ({"non_linearity": "nope"}, "non_linearity"),
])
def test_compacter_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ak.ConfigError, match=match):
        ak.Compacter(**kw)
