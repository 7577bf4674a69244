"""DyLoRA's rank truncation and sampling, PiSSA's initialisation, residual base and conversion."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.io.peft import PeftExportError

from .helpers import perturb
from .models import build, inputs_for, run

QV = ("attn.q", "attn.v")


def _dylora(r: int = 4, **kw) -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.DyLoRA(r=r, alpha=8, **kw))
    perturb(kit, "a", std=0.3)
    kit.activate("a")
    return model, kit


def _plain_lora(dylora: ak.AdapterKit, ranks: dict[str, int]) -> torch.nn.Module:
    """A fresh model with a plain LoRA whose site ``h`` has rank ``ranks[h]`` and the first
    ``ranks[h]`` rows of A and columns of B of the DyLoRA adapter in ``dylora``."""
    model = build("llama")
    kit = ak.AdapterKit(model)
    pattern = {f"^{h}$": k for h, k in ranks.items()}
    kit.add("a", ak.LoRA(r=4, alpha=8, targets=QV, rank_pattern=pattern))
    with torch.no_grad():
        for host, module in kit.record("a").modules.items():
            source, k = dylora.record("a").modules[host], ranks[host]
            module.lora_A.copy_(source.lora_A[:k])
            module.lora_B.copy_(source.lora_B[:, :k])
            assert module.scale == 8 / k  # the scale alpha / b of the truncation
    kit.activate("a")
    return model


# -- DyLoRA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 3, 4, None])
def test_dylora_at_rank_b_is_the_truncated_lora(rank: int | None) -> None:
    model, kit = _dylora()
    ak.set_dylora_rank(kit, "a", rank)
    x = inputs_for("llama")
    k = rank or 4
    want = run(_plain_lora(kit, dict.fromkeys(kit.record("a").modules, k)), "llama", x)
    torch.testing.assert_close(run(model, "llama", x), want, atol=1e-6, rtol=0)
    assert all(m.last_rank == k for m in kit.record("a").modules.values())


def test_dylora_training_forward_is_the_lora_at_the_sampled_ranks() -> None:
    model, kit = _dylora()
    model.train()
    x = inputs_for("llama")
    torch.manual_seed(5)
    out = run(model, "llama", x)
    ranks = {h: m.last_rank for h, m in kit.record("a").modules.items()}
    assert len(set(ranks.values())) > 1, ranks  # each site draws its own rank
    torch.testing.assert_close(out, run(_plain_lora(kit, ranks), "llama", x), atol=1e-6, rtol=0)


def test_dylora_steps_update_only_the_sampled_rows() -> None:
    model, kit = _dylora()
    params = kit.train("a")
    model.train()
    opt = torch.optim.SGD(params, lr=0.1)
    modules = kit.record("a").modules.values()
    x = inputs_for("llama")
    seen = set()
    for step in range(6):
        before = [(m.lora_A.detach().clone(), m.lora_B.detach().clone()) for m in modules]
        torch.manual_seed(step)
        loss = run(model, "llama", x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for m, (a0, b0) in zip(modules, before):
            k = m.last_rank
            seen.add(k)
            assert torch.equal(m.lora_A[k:], a0[k:]) and torch.equal(m.lora_B[:, k:], b0[:, k:])
            assert m.lora_A.grad[k:].abs().sum() == 0 and m.lora_B.grad[:, k:].abs().sum() == 0
            assert (m.lora_A[:k] != a0[:k]).any(dim=1).all()  # every used row moved
            assert (m.lora_B[:, :k] != b0[:, :k]).any(dim=0).all()
    assert len(seen) > 1


def test_dylora_sampling_follows_torch_manual_seed() -> None:
    model, kit = _dylora(r=4, min_rank=2)
    model.train()
    x = inputs_for("llama")
    modules = list(kit.record("a").modules.values())

    def draws(seed: int) -> list[int]:
        torch.manual_seed(seed)
        out = []
        for _ in range(8):
            run(model, "llama", x)
            out += [m.last_rank for m in modules]
        return out

    first = draws(1)
    assert draws(1) == first
    assert draws(2) != first
    assert set(first) == {2, 3, 4}  # uniform over [min_rank, r]


def test_dylora_set_rank_merged_and_saved(tmp_path) -> None:
    model, kit = _dylora(rank=4)
    x = inputs_for("llama")
    full = run(model, "llama", x)
    ak.set_dylora_rank(kit, "a", 2)
    low = run(model, "llama", x)
    assert not torch.allclose(low, full)
    kit.merge("a")
    ak.set_dylora_rank(kit, "a", 3)  # merged again at the new rank
    assert kit.record("a").merged
    kit.activate(None)
    merged = run(model, "llama", x)
    kit.unmerge("a")
    kit.activate("a")
    torch.testing.assert_close(merged, run(model, "llama", x), atol=1e-5, rtol=0)
    kit.save("a", tmp_path / "a")
    fresh = build("llama")
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "a")
    assert kit2.config("a").rank == 3
    kit2.activate("a")
    # the original's base weights went through merge and unmerge: float rounding
    torch.testing.assert_close(run(fresh, "llama", x), run(model, "llama", x), atol=1e-5, rtol=0)


def test_dylora_config_and_rank_errors() -> None:
    for kw in ({"min_rank": 0}, {"min_rank": 5}, {"rank": 5}, {"min_rank": 2, "rank": 1},
               {"rank": True}, {"r": 0}):
        with pytest.raises(ak.ConfigError, match="DyLoRA"):
            ak.DyLoRA(r=kw.pop("r", 4), **kw)
    _, kit = _dylora(min_rank=2)
    with pytest.raises(ak.ConfigError, match="min_rank=2"):
        ak.set_dylora_rank(kit, "a", 1)
    kit.add("l", ak.LoRA())
    with pytest.raises(ak.ConfigError, match="not dylora"):
        ak.set_dylora_rank(kit, "l", 2)


# -- PiSSA -------------------------------------------------------------------------------------
def _pissa(family: str = "llama", **kw) -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(**{"r": 4, "alpha": 8, "init": "pissa", **kw}))
    kit.activate("a")
    return model, kit


def test_pissa_factors_are_the_principal_part() -> None:
    """``s B A`` is the best rank-r approximation of W; the residual keeps W's other singular
    values."""
    original = build("llama")
    model, kit = _pissa()
    for host, module in kit.record("a").modules.items():
        w = original.get_submodule(host).weight
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        top = (u[:, :4] * s[:4]) @ vh[:4]
        torch.testing.assert_close(module.delta_weight(model.get_submodule(host)), top,
                                   atol=1e-5, rtol=0)
        residual = torch.linalg.svdvals(model.get_submodule(host).weight)
        torch.testing.assert_close(residual[:-4], s[4:], atol=1e-5, rtol=0)


def test_pissa_remove_keeps_what_others_merged() -> None:
    """Removing the PiSSA adapter puts back its principal part but keeps another adapter merged
    into the same weights meanwhile (within float rounding)."""
    x = inputs_for("llama")
    reference = build("llama")
    base = run(reference, "llama", x)
    ref_kit = ak.AdapterKit(reference)
    ref_kit.add("l", ak.LoRA(r=2, alpha=4))
    perturb(ref_kit, "l", std=0.3)
    ref_kit.activate("l")
    with_l = run(reference, "llama", x)  # the original base plus "l"
    model, kit = _pissa()
    kit.add("l", ak.LoRA(r=2, alpha=4))
    perturb(kit, "l", std=0.3)
    kit.merge("l")
    kit.remove("a")
    kit.activate(None)
    torch.testing.assert_close(run(model, "llama", x), with_l, atol=1e-5, rtol=0)
    kit.remove("l")
    torch.testing.assert_close(run(model, "llama", x), base, atol=1e-5, rtol=0)


def test_pissa_errors_leave_the_model_unchanged() -> None:
    with pytest.raises(ak.ConfigError, match="init"):
        ak.LoRA(init="pissa_niter_x")
    for family, kw, match in [
        ("llama", {"targets": ("embed",)}, "Linear and Conv1D hosts only"),
        ("gpt2", {"targets": ("lm_head",)}, "tied to other modules"),
        ("llama", {"r": 17, "targets": ("attn.v",)}, "at most min"),
    ]:
        model = build(family)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ak.ConfigError, match=match):
            ak.AdapterKit(model).add("a", ak.LoRA(init="pissa", **kw))
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_pissa_niter_is_deterministic_and_leaves_the_global_generator() -> None:
    kits = []
    for seed in (0, 1):
        model = build("llama")
        torch.manual_seed(seed)
        want = torch.rand(3)
        torch.manual_seed(seed)
        kit = ak.AdapterKit(model)
        kit.add("a", ak.LoRA(r=4, init="pissa_niter_2"))
        assert torch.equal(torch.rand(3), want)
        kits.append(kit)
    for host, module in kits[0].record("a").modules.items():
        assert torch.equal(module.lora_A, kits[1].record("a").modules[host].lora_A)


@pytest.mark.parametrize("kw", [{}, {"use_rslora": True, "rank_pattern": {"q_proj": 2}}])
def test_pissa_as_lora_applies_to_the_original_base(kw: dict, tmp_path) -> None:
    model, kit = _pissa(**kw)
    perturb(kit, "a", std=0.3)
    x = inputs_for("llama")
    want = run(model, "llama", x)
    ak.save_pissa_as_lora(kit, "a", tmp_path / "lora")
    fresh = build("llama")
    original = {k: v.clone() for k, v in fresh.state_dict().items()}
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "lora")
    config = kit2.config("a")
    assert (type(config), config.r, config.init) == (ak.LoRA, 8, "zeros")
    assert dict(config.rank_pattern) == ({"q_proj": 4} if kw else {})
    assert all(torch.equal(v, original[k]) for k, v in fresh.state_dict().items() if k in original)
    kit2.activate("a")
    torch.testing.assert_close(run(fresh, "llama", x), want, atol=1e-5, rtol=0)
    assert kit.names == ["a"] and kit.config("a").init == "pissa"  # the kit is unchanged


def test_pissa_peft_export_and_conversion_errors(tmp_path) -> None:
    _, kit = _pissa()
    with pytest.raises(PeftExportError, match="save_pissa_as_lora"):
        kit.save("a", tmp_path / "p", format="peft")
    kit.add("l", ak.LoRA())
    with pytest.raises(ak.ConfigError, match="not a PiSSA adapter"):
        ak.pissa_as_lora(kit, "l")


def test_combine_refuses_pissa_adapters() -> None:
    kit = ak.AdapterKit(build("llama"))
    kit.add("p", ak.LoRA(r=2, alpha=4, init="pissa"))
    kit.add("q", ak.LoRA(r=2, alpha=4))
    with pytest.raises(ak.CombineError, match="PiSSA"):
        kit.combine("pq", {"p": 0.5, "q": 0.5}, how="cat")
    assert "pq" not in kit.names
