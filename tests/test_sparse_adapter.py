"""SparseAdapter: SNIP against an independent computation, masks through training and saving."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterkit as ak

from .models import build, inputs_for, run

CONFIG = dict(reduction=4, placement="both")


def _kit(family: str = "bert", **kw: Any) -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.SparseAdapter(**{**CONFIG, **kw}))
    return model, kit


def _modules(kit: ak.AdapterKit, name: str = "a") -> list[Any]:
    return list(kit.record(name).modules.values())


def _masks(kit: ak.AdapterKit, name: str = "a") -> list[torch.Tensor]:
    return [t.clone() for m in _modules(kit, name) for t in (m.down_mask, m.up_mask)]


def _batches() -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in (1, 2):
        batch = inputs_for("bert", seed)
        batch["labels"] = torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(seed))
        out.append(batch)
    return out


def _reference_scores(init: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """``|w * dL/dw|`` summed over ``_batches()``, from a plain dense Bottleneck holding the same
    weights on a fresh copy of the base model, by ``loss.backward()``."""
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("ref", ak.Bottleneck(**CONFIG))
    modules = _modules(kit, "ref")
    with torch.no_grad():
        for m, (wd, bd, wu, bu) in zip(modules, init):
            m.down.weight.copy_(wd)
            m.down.bias.copy_(bd)
            m.up.weight.copy_(wu)
            m.up.bias.copy_(bu)
    kit.activate("ref")
    model.eval()
    for batch in _batches():
        model(**batch).loss.backward()
    return [(w * w.grad).abs() for m in modules for w in (m.down.weight, m.up.weight)]


def _init_weights(kit: ak.AdapterKit) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.detach().clone() for t in (m.down.weight, m.down.bias, m.up.weight, m.up.bias))
            for m in _modules(kit)]


@pytest.mark.parametrize(("scope", "sparsity"), [("global", 0.6), ("layer", 0.5)])
def test_snip_keeps_the_largest_connection_sensitivities(scope: str, sparsity: float) -> None:
    _, kit = _kit(criterion="snip", sparsity=sparsity, scope=scope)
    init = _init_weights(kit)
    fallback = _masks(kit)
    density = ak.snip_prune(kit, "a", _batches())
    masks = _masks(kit)
    scores = _reference_scores(init)
    assert any(not torch.equal(a, b) for a, b in zip(masks, fallback)), "SNIP kept the fallback"
    groups = [(torch.cat([s.flatten() for s in scores]), torch.cat([m.flatten() for m in masks]))]
    if scope == "layer":
        groups = [(s.flatten(), m.flatten()) for s, m in zip(scores, masks)]
    for score, keep in groups:
        assert int(keep.sum()) == round((1 - sparsity) * keep.numel())
        assert score[keep].min() > score[~keep].max()  # every kept entry beats every pruned one
    for m in _modules(kit):  # the pruned weights are zero, the kept ones as initialised
        for w, mask in ((m.down.weight, m.down_mask), (m.up.weight, m.up_mask)):
            assert torch.all(w[~mask] == 0) and torch.all(w[mask] != 0)
    assert set(density) == set(kit.record("a").modules)


def test_snip_takes_a_loss_callable_and_a_loss_fn() -> None:
    batch = _batches()[0]
    results = []
    for how in ("batches", "callable", "loss_fn"):
        model, kit = _kit(criterion="snip")
        if how == "callable":
            ak.snip_prune(kit, "a", lambda m=model: m(**batch).loss)
        else:
            ak.snip_prune(kit, "a", [batch], (lambda m, b: m(**b).loss) if how == "loss_fn" else None)
        results.append(_masks(kit))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_snip_refuses_other_criteria_and_a_loss_without_gradient() -> None:
    _, kit = _kit(criterion="magnitude")
    with pytest.raises(ak.ConfigError, match="criterion='snip'"):
        ak.snip_prune(kit, "a", _batches())
    model, kit = _kit(criterion="snip")
    before = _masks(kit)
    with pytest.raises(ak.ConfigError, match="every SNIP score"):
        ak.snip_prune(kit, "a", lambda: model.classifier.weight.sum())
    assert all(torch.equal(a, b) for a, b in zip(_masks(kit), before))
    with pytest.raises(ak.ConfigError, match="mapping"):
        ak.snip_prune(kit, "a", [torch.zeros(2)])
    assert all(torch.equal(a, b) for a, b in zip(_masks(kit), before))


@pytest.mark.parametrize(("scope", "criterion"), [("global", "magnitude"), ("layer", "random")])
@pytest.mark.parametrize("sparsity", [0.4, 0.8])
def test_fraction_of_zeros_is_the_sparsity(scope: str, criterion: str, sparsity: float) -> None:
    _, kit = _kit(sparsity=sparsity, scope=scope, criterion=criterion)
    weights = [w for m in _modules(kit) for w in (m.down.weight, m.up.weight)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    if scope == "global":
        assert zeros == total - round((1 - sparsity) * total)
    else:
        assert zeros == sum(w.numel() - round((1 - sparsity) * w.numel()) for w in weights)
    assert abs(zeros / total - sparsity) < 0.01


def test_magnitude_mask_keeps_the_largest_weights() -> None:
    _, kit = _kit(criterion="snip", sparsity=0.7)  # the data-free fallback: by magnitude
    weights = torch.cat([w.detach().abs().flatten() for m in _modules(kit)
                         for w in (m.down.weight, m.up.weight)])
    keep = torch.cat([mask.flatten() for mask in _masks(kit)])
    assert weights[keep].min() > weights[~keep].max()


def test_mask_survives_adamw_weight_decay() -> None:
    model, kit = _kit(criterion="random", sparsity=0.6)
    masks = _masks(kit)
    params = kit.train("a")
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)
    x = inputs_for("bert")
    target = torch.randn(run(model, "bert", x).shape, generator=torch.Generator().manual_seed(0))
    for _ in range(10):
        loss = torch.nn.functional.mse_loss(run(model, "bert", x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(_masks(kit), masks))
    for m in _modules(kit):
        for w, mask in ((m.down.weight, m.down_mask), (m.up.weight, m.up_mask)):
            assert torch.all(w[~mask] == 0)
    assert all(not torch.equal(p, b) for p, b in zip(params, before)), "training changed nothing"


def test_the_forward_ignores_stored_pruned_values() -> None:
    model, kit = _kit(criterion="magnitude")
    kit.activate("a")
    x = inputs_for("bert")
    want = run(model, "bert", x)
    with torch.no_grad():
        for m in _modules(kit):
            m.down.weight[~m.down_mask] = 5.0
            m.up.weight[~m.up_mask] = 5.0
    assert torch.equal(run(model, "bert", x), want)


def test_save_load_keeps_the_mask(tmp_path) -> None:
    model, kit = _kit(criterion="snip", sparsity=0.5)
    ak.snip_prune(kit, "a", _batches())
    masks = _masks(kit)
    x = inputs_for("bert")
    want = run(model, "bert", x)
    kit.save("a", tmp_path / "a")
    fresh = build("bert")
    torch.manual_seed(123)  # other initial weights, so another fallback mask before loading
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(_masks(kit2), masks))
    assert all(m.dtype == torch.bool for m in _masks(kit2))
    kit2.activate("a")
    assert torch.equal(run(fresh, "bert", x), want)


@pytest.mark.parametrize("bad", [dict(sparsity=0.0), dict(sparsity=1.0), dict(sparsity=1.5),
                                 dict(sparsity=True), dict(criterion="grasp"),
                                 dict(scope="local"), dict(seed=1.5), dict(reduction=0)])
def test_bad_configs(bad: dict[str, Any]) -> None:
    with pytest.raises(ak.ConfigError):
        ak.SparseAdapter(**bad)
