"""SHiRA: the mask travels with the adapter, and the sparse scatter equals merging."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterkit as ak
from adapterkit.core.sites import dense_weight
from adapterkit.methods.shira import magnitude_indices, random_indices

from .helpers import perturb
from .models import build, inputs_for, run


def test_save_load_takes_the_mask_from_the_checkpoint(tmp_path) -> None:
    """A magnitude mask depends on the base weights: loading into another base rebuilds another
    mask first, which the saved one must replace."""
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.SHiRA(fraction=0.1, mask_type="magnitude"))
    perturb(kit, "a")
    kit.save("a", tmp_path / "a")
    saved = {h: m.shira_indices.clone() for h, m in kit.record("a").modules.items()}
    other = build("llama", seed=1)
    kit2 = ak.AdapterKit(other)
    kit2.add("probe", ak.SHiRA(fraction=0.1, mask_type="magnitude"))
    rebuilt = {h: m.shira_indices for h, m in kit2.record("probe").modules.items()}
    assert any(not torch.equal(rebuilt[h], saved[h]) for h in saved), "the bases give one mask"
    kit2.load(tmp_path / "a")
    for host, module in kit2.record("a").modules.items():
        assert torch.equal(module.shira_indices, saved[host])
        assert module.shira_indices.dtype == torch.long
        assert torch.equal(module.shira_weight, kit.record("a").modules[host].shira_weight)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scatter_into_equals_merging(family: str) -> None:
    """The in-place scatter of the values (GPT-2: through the Conv1D transpose) changes the
    weights as ``kit.merge`` does, and the negative scatter takes them back out."""
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.SHiRA(r=2, random_seed=3))
    perturb(kit, "a")
    hosts = {h: model.get_submodule(h) for h in kit.record("a").modules}
    base = {h: m.weight.detach().clone() for h, m in hosts.items()}
    kit.merge("a")
    merged = {h: m.weight.detach().clone() for h, m in hosts.items()}
    kit.unmerge()
    with torch.no_grad():
        for h, module in kit.record("a").modules.items():
            module.scatter_into(hosts[h], 1.0)
            assert torch.equal(hosts[h].weight, merged[h])
            changed = int((hosts[h].weight != base[h]).sum())
            assert 0 < changed <= module.shira_weight.numel()
            module.scatter_into(hosts[h], -1.0)
            torch.testing.assert_close(hosts[h].weight, base[h], atol=1e-6, rtol=0)


def test_merged_weights_give_the_unmerged_output_on_gpt2() -> None:
    model = build("gpt2")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.SHiRA(fraction=0.2, targets=("ffn.in", "ffn.out")))
    perturb(kit, "a")
    kit.activate("a")
    x = inputs_for("gpt2")
    want = run(model, "gpt2", x)
    with torch.no_grad():
        for h, module in kit.record("a").modules.items():
            module.scatter_into(model.get_submodule(h))
    kit.activate(None)
    torch.testing.assert_close(run(model, "gpt2", x), want, atol=1e-5, rtol=0)


def test_masks_follow_the_seed_and_the_weights() -> None:
    a, b = random_indices(32, 16, 40, 0), random_indices(32, 16, 40, 0)
    assert torch.equal(a, b) and not torch.equal(a, random_indices(32, 16, 40, 1))
    assert a.unique().numel() == 40 and torch.equal(a, a.sort().values)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    top = magnitude_indices(w, 40)
    flat = w.abs().flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[top] = True
    assert flat[keep].min() > flat[~keep].max()
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.SHiRA(r=1, mask_type="magnitude", targets=("attn.q",)))
    for host, module in kit.record("a").modules.items():
        want = magnitude_indices(dense_weight(model.get_submodule(host)), module.shira_weight.numel())
        assert torch.equal(module.shira_indices, want)


def test_r_larger_than_the_weight_is_refused() -> None:
    kit = ak.AdapterKit(build("llama"))
    with pytest.raises(ak.ConfigError, match="entries"):
        kit.add("a", ak.SHiRA(r=64, targets=("attn.v",)))
    assert kit.names == []


@pytest.mark.parametrize("bad", [dict(r=2, fraction=0.1), dict(r=0), dict(r=True),
                                 dict(fraction=0.0), dict(fraction=1.5), dict(mask_type="snip"),
                                 dict(random_seed=1.5), dict(targets=())])
def test_bad_configs(bad: dict[str, Any]) -> None:
    with pytest.raises(ak.ConfigError):
        ak.SHiRA(**bad)


def test_scatter_into_a_non_contiguous_weight() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 6))
    with torch.no_grad():
        model[0].weight = torch.nn.Parameter(torch.randn(8, 6).t())  # (6, 8), not contiguous
    kit = ak.AdapterKit(model)
    kit.add("a", ak.SHiRA(fraction=0.25, targets=("0",)))
    perturb(kit, "a")
    module = kit.record("a").modules["0"]
    want = model[0].weight.detach() + module.delta_weight(model[0]).detach()
    module.scatter_into(model[0])
    assert torch.equal(model[0].weight, want)
