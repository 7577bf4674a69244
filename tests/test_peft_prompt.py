"""Interop with Hugging Face PEFT's prompt-tuning and prefix-tuning checkpoints, checked against
PEFT itself on a tiny llama (grouped-query attention), bert (sequence classification) and gpt2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.io.peft import PeftExportError

from .helpers import kit_snapshot, peft_cache_issue, perturb, set_config_field
from .models import build, inputs_for

pytestmark = pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning")

TASKS = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS", "gpt2": "CAUSAL_LM"}
KINDS: dict[str, tuple[type, dict[str, Any]]] = {
    "prompt": (peft.PromptTuningConfig, {}),
    "prefix": (peft.PrefixTuningConfig, {}),
    "prefix-projection": (peft.PrefixTuningConfig, dict(prefix_projection=True,
                                                        encoder_hidden_size=8)),
}
CASES = [pytest.param(f, k, id=f"{f}-{k}") for f in TASKS for k in KINDS]


def _inputs(family: str) -> dict[str, torch.Tensor]:
    x = inputs_for(family)
    mask = torch.ones_like(x["input_ids"])
    mask[1, -2:] = 0  # a padded row, so the extended mask matters
    x["attention_mask"] = mask
    return x


def _peft_checkpoint(family: str, kind: str, path: Path) -> peft.PeftModel:
    cls, kwargs = KINDS[kind]
    pm = peft.get_peft_model(build(family), cls(task_type=TASKS[family], num_virtual_tokens=3,
                                                **kwargs))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:  # the prompt encoder and the classifier head
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(path)
    return peft.PeftModel.from_pretrained(build(family), path).eval()


@torch.no_grad()
def _logits(model: Any, family: str) -> torch.Tensor:
    return model(**_inputs(family)).logits


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_peft_checkpoint_loads_with_peft_outputs(family: str, kind: str, tmp_path: Path) -> None:
    if family == "bert" and kind.startswith("prefix") and (why := peft_cache_issue()):
        pytest.skip(why)
    pm = _peft_checkpoint(family, kind, tmp_path / "ckpt")
    model = build(family).eval()
    base = _logits(model, family)
    kit = ak.AdapterKit(model)
    name = kit.load(tmp_path / "ckpt")
    record = kit.record(name)
    assert record.spec.name == kind.split("-")[0] and record.config.num_tokens == 3
    assert record.heads == (("classifier",) if family == "bert" else ())
    kit.activate(name)
    got, want = _logits(model, family), _logits(pm, family)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got[..., -base.shape[-2]:, :] if got.dim() == 3 else got, base,
                              atol=1e-3)


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_round_trip_peft_ours_peft_is_identical(family: str, kind: str, tmp_path: Path) -> None:
    _peft_checkpoint(family, kind, tmp_path / "p")
    kit = ak.AdapterKit(build(family))
    kit.save(kit.load(tmp_path / "p"), tmp_path / "q", format="peft")
    before = load_file(tmp_path / "p" / "adapter_model.safetensors")
    after = load_file(tmp_path / "q" / "adapter_model.safetensors")
    assert sorted(before) == sorted(after)
    for key, t in before.items():
        assert after[key].dtype == t.dtype and torch.equal(after[key], t), key


EXPORTS: dict[str, Any] = {
    "prompt": ak.PromptTuning(num_tokens=3),
    "prefix": ak.PrefixTuning(num_tokens=3),
    "prefix-reparam": ak.PrefixTuning(num_tokens=3, reparameterize=True, hidden=8),
}


@pytest.mark.parametrize("kind", EXPORTS)
@pytest.mark.parametrize("family", TASKS)
def test_export_loads_in_peft_with_equal_outputs(family: str, kind: str, tmp_path: Path) -> None:
    if family == "bert" and kind.startswith("prefix") and (why := peft_cache_issue()):
        pytest.skip(why)
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", EXPORTS[kind])
    perturb(kit, "a")
    heads = ("classifier",) if family == "bert" else ()
    kit.train("a", train_also=heads)
    with torch.no_grad():
        for path in heads:
            for p in model.get_submodule(path).parameters():
                p.add_(0.5)
    model.eval()
    want = _logits(model, family)
    kit.save("a", tmp_path, format="peft")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["task_type"] == TASKS[family] and cfg["num_virtual_tokens"] == 3
    assert cfg.get("prefix_projection") in (None, False)
    assert sorted(load_file(tmp_path / "adapter_model.safetensors")) == sorted(
        ["prompt_embeddings"] + [f"base_model.classifier.{k}" for k in ("bias", "weight")
                                 if heads])
    pm = peft.PeftModel.from_pretrained(build(family), tmp_path).eval()
    torch.testing.assert_close(_logits(pm, family), want, atol=1e-5, rtol=0)


def test_export_of_a_classifier_without_its_head_raises(tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.add("a", ak.PromptTuning(num_tokens=2))
    with pytest.raises(PeftExportError, match="train it with the adapter"):
        kit.save("a", tmp_path, format="peft")
    assert not (tmp_path / "adapter_config.json").exists()


@pytest.mark.parametrize(("field", "value", "match"), [
    ("num_transformer_submodules", 2, "encoder-decoder"),
    ("task_type", "TOKEN_CLS", "task types"),
    ("num_virtual_tokens", 0, "positive integer"),
    ("num_layers", 7, r"num_layers=7 \(this model: 2\)"),
    ("token_dim", 48, "token_dim=48"),
    ("prompt_tuning_init", "TEXT", None),  # initialisation only: loads
])
def test_bad_config_fields(field: str, value: Any, match: str | None, tmp_path: Path) -> None:
    _peft_checkpoint("llama", "prompt", tmp_path)
    set_config_field(tmp_path, field, value)
    model = build("llama")
    kit = ak.AdapterKit(model)
    if match is None:
        assert kit.load(tmp_path) in kit.names
        return
    before = kit_snapshot(model, kit)
    with pytest.raises(ak.LoadError, match=match):
        kit.load(tmp_path)
    assert kit_snapshot(model, kit) == before


def test_wrong_table_width_is_reported(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _peft_checkpoint("gpt2", "prefix", tmp_path)
    save_file({"prompt_embeddings": torch.zeros(3, 100)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ak.LoadError, match=r"prompt_embeddings.*\(3, 100\)"):
        ak.AdapterKit(build("gpt2")).load(tmp_path)
