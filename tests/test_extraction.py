"""extract_lora: a fine-tune (perturbed targeted weights of a copy) comes back as a LoRA."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterkit as ak

from .models import build, inputs_for, run


def _finetune(family: str, targets: tuple[str, ...], std: float = 0.05, seed: int = 0):
    base, ft = build(family), build(family)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for path in ak.AdapterKit(build(family)).finder().paths(targets):
            w = ft.get_submodule(path).weight
            w.add_(torch.randn(w.shape, generator=g) * std)
    return base, ft


@pytest.mark.parametrize(("family", "targets"), [
    ("bert", ("all-linear",)), ("gpt2", ("all-linear",)), ("llama", ("attn.q", "ffn.out")),
    ("mlp", ("0", "2"))])
def test_full_rank_extraction_reproduces_the_finetune(family: str, targets) -> None:
    base, ft = _finetune(family, targets)
    x = inputs_for(family)
    want = run(ft, family, x)
    report = ak.extract_lora(base, ft, rank=None, energy=None, targets=targets, name="x")
    assert report.share_kept == pytest.approx(1.0)
    assert all(s["energy"] == pytest.approx(1.0) for s in report.sites.values())
    kit = ak.AdapterKit(base)
    kit.activate("x")
    torch.testing.assert_close(run(base, family, x), want, atol=1e-4, rtol=0)
    kit.activate(None)
    assert not torch.allclose(run(base, family, x), want, atol=1e-4)


def test_energy_and_rank_choices_are_reported(capsys) -> None:
    base, ft = _finetune("bert", ("all-linear",))
    report = ak.extract_lora(base, ft, energy=0.6, name="e60", add=False, progress=True)
    err, n = capsys.readouterr().err, len(report.sites)
    assert "extract: 100%|" in err and f"{n}/{n}" in err  # a bar over the sites
    assert all(s["energy"] >= 0.6 - 1e-6 for s in report.sites.values())
    assert 0 < report.adapter_params < report.full_params
    assert report.share_kept + report.share_lost_in_targets == pytest.approx(1.0)
    assert ak.AdapterKit(base).names == []  # add=False leaves the model alone
    fixed = ak.extract_lora(base, ft, rank=3, name="r3")
    assert {s["rank"] for s in fixed.sites.values()} == {3}
    assert ak.AdapterKit(base).config("r3").r == 3
    assert fixed.adapter_params == sum(3 * (32 + 32) if s["full_params"] == 32 * 32 else 3 * (32 + 64)
                                       for s in fixed.sites.values())


def test_untargeted_changes_and_heads(tmp_path) -> None:
    base, ft = _finetune("bert", ("attn.q", "attn.v"))
    with torch.no_grad():
        ft.bert.embeddings.LayerNorm.weight.add_(0.5)
        ft.classifier.weight.add_(0.5)
    report = ak.extract_lora(base, ft, energy=None, targets=("attn.q", "attn.v"), name="x",
                             include_heads=("classifier",))
    assert report.share_untargeted > 0
    assert report.top_untargeted[0][0] == "bert.embeddings.LayerNorm.weight"
    assert report.share_heads > 0 and report.heads == ("classifier",)
    assert report.share_kept + report.share_untargeted + report.share_heads == pytest.approx(1.0)
    torch.testing.assert_close(base.classifier.weight, ft.classifier.weight)
    kit = ak.AdapterKit(base)
    kit.save("x", tmp_path / "x")
    with torch.no_grad():  # undo the untargeted change: the rest must then match exactly
        ft.bert.embeddings.LayerNorm.weight.sub_(0.5)
    fresh = build("bert")
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "x")
    kit2.activate("x")
    x = inputs_for("bert")
    torch.testing.assert_close(run(fresh, "bert", x), run(ft, "bert", x), atol=1e-4, rtol=0)


def test_unchanged_sites_are_left_out() -> None:
    base, ft = _finetune("bert", ("attn.q",))
    report = ak.extract_lora(base, ft, energy=0.9, targets=("attn.q", "attn.v"), name="x")
    assert {s for s, r in report.sites.items() if r["rank"] == 0} == {
        "bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.1.attention.self.value"}
    assert len(ak.AdapterKit(base).record("x").sites) == 2


def test_extraction_errors_leave_the_model_unchanged() -> None:
    base = build("bert")
    other = build("gpt2")
    with pytest.raises(ak.AdapterError, match="lacks or reshapes targeted modules"):
        ak.extract_lora(base, other, name="x")
    with pytest.raises(ak.AdapterError, match="no targeted weight differs"):
        ak.extract_lora(base, build("bert"), name="x")
    _, ft = _finetune("bert", ("all-linear",))
    with pytest.raises(ak.TargetError):
        ak.extract_lora(base, ft, targets=("nonexistent",), name="x")
    with pytest.raises(ak.AdapterError, match="heads missing or of another shape"):
        ak.extract_lora(base, _wide_head(ft), include_heads=("classifier",), name="x")
    assert ak.AdapterKit(base).names == []


def _wide_head(model: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(model)
    m.classifier = torch.nn.Linear(32, 5)
    return m
