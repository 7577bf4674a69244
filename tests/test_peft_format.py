"""Interop with Hugging Face PEFT's LoRA checkpoints, checked against PEFT itself."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers as T
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

import adapterkit as ak
import adapterkit.io.peft as peft_io

from .helpers import kit_snapshot, perturb, set_config_field
from .models import _DEC, build, inputs_for, run

# family, LoraConfig kwargs, safetensors (else adapter_model.bin)
PEFT_CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "bert-seqcls-head": ("bert", dict(r=4, lora_alpha=8, target_modules=["query", "value"],
                                      task_type="SEQ_CLS", modules_to_save=["classifier"]), True),
    "bert-rslora-embedding": ("bert", dict(r=4, lora_alpha=16, use_rslora=True, target_modules=[
        "word_embeddings", "query", "intermediate.dense", "no_such_module"]), True),
    "gpt2-conv1d-rslora": ("gpt2", dict(r=2, lora_alpha=4, use_rslora=True,
                                        target_modules=["c_attn", "c_proj"],
                                        fan_in_fan_out=True), True),
    "llama-regex-causal": ("llama", dict(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                                         target_modules=r".*\.(q_proj|v_proj|down_proj)"), True),
    "llama-layers": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"],
                                   layers_to_transform=[1], layers_pattern="layers"), True),
    "llama-layer-exclude": ("llama", dict(r=3, lora_alpha=6, target_modules=["k_proj", "o_proj"],
                                          layers_to_transform=0,
                                          exclude_modules=["model.layers.0.self_attn.k_proj"]),
                            True),
    "vit-conv2d-bin": ("vit", dict(r=4, lora_alpha=4, target_modules=["projection", "q_proj"]),
                       False),
    "gpt2-dora": ("gpt2", dict(r=2, lora_alpha=4, use_dora=True, target_modules=["c_fc"],
                               fan_in_fan_out=True), True),
    "llama-dora-rslora": ("llama", dict(r=4, lora_alpha=8, use_dora=True, use_rslora=True,
                                        target_modules=["v_proj", "gate_proj"]), True),
    "bert-dora-head": ("bert", dict(r=4, lora_alpha=8, use_dora=True, task_type="SEQ_CLS",
                                    target_modules=["key", "output.dense"]), True),
}
LORA_KEY = re.compile(
    r"base_model\.model\..+\.(lora_[AB]\.weight|lora_embedding_[AB]|lora_magnitude_vector)")


def _randomize(model: torch.nn.Module, seed: int = 3) -> None:
    """LoRA weights (and saved heads) far from their identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            if "magnitude" in name:
                p.mul_(1 + noise)
            elif "lora_" in name or "modules_to_save" in name:
                p.copy_(noise)


def _peft_checkpoint(case: str, path: Path) -> peft.PeftModel:
    family, kwargs, safe = PEFT_CASES[case]
    pm = peft.get_peft_model(build(family), peft.LoraConfig(**kwargs))
    _randomize(pm)
    pm.eval()
    pm.save_pretrained(path, safe_serialization=safe)
    return pm


def _peft_sites(pm: peft.PeftModel) -> list[str]:
    return [n for n, m in pm.base_model.model.named_modules() if isinstance(m, LoraLayer)]


def _file_tensors(path: Path) -> dict[str, torch.Tensor]:
    if (path / "adapter_model.safetensors").is_file():
        return load_file(path / "adapter_model.safetensors")
    return torch.load(path / "adapter_model.bin", weights_only=True)


@torch.no_grad()
@pytest.mark.parametrize("case", PEFT_CASES)
def test_peft_checkpoint_loads_with_peft_outputs(case: str, tmp_path: Path) -> None:
    pm = _peft_checkpoint(case, tmp_path / "ckpt")
    family = PEFT_CASES[case][0]
    x = inputs_for(family)
    want = run(pm, family, x)
    model = build(family)
    kit = ak.AdapterKit(model)
    base = run(model, family, x)
    assert kit.load(tmp_path / "ckpt") == "ckpt"
    assert [s.host for s in kit.record("ckpt").sites] == _peft_sites(pm)
    kit.activate("ckpt")
    got = run(model, family, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, base, atol=1e-3)
    if PEFT_CASES[case][1].get("modules_to_save"):
        assert kit.record("ckpt").heads == ("classifier",)


@pytest.mark.parametrize("case", PEFT_CASES)
def test_round_trip_peft_ours_peft_is_identical(case: str, tmp_path: Path) -> None:
    _peft_checkpoint(case, tmp_path / "p")
    kit = ak.AdapterKit(build(PEFT_CASES[case][0]))
    name = kit.load(tmp_path / "p", name="rt")
    kit.save(name, tmp_path / "q", format="peft")
    before, after = _file_tensors(tmp_path / "p"), _file_tensors(tmp_path / "q")
    assert sorted(before) == sorted(after)
    for key, t in before.items():
        assert after[key].dtype == t.dtype, key
        assert torch.equal(after[key], t), key


# family, config, trained heads, task_type written
EXPORT_CASES: dict[str, tuple[str, ak.LoRA, tuple[str, ...], str | None]] = {
    "bert-qv-head": ("bert", ak.LoRA(r=4, alpha=8), ("classifier",), "SEQ_CLS"),
    "bert-embed-ffn-rslora": ("bert", ak.LoRA(r=4, alpha=8, use_rslora=True,
                                              targets=("embed", "ffn.in")), (), None),
    "gpt2-all-linear-gaussian": ("gpt2", ak.LoRA(r=2, alpha=4, targets=("all-linear",),
                                                 init="gaussian"), (), "CAUSAL_LM"),
    "llama-regex-rslora": ("llama", ak.LoRA(r=4, alpha=6, use_rslora=True, dropout=0.1,
                                            targets=(r".*layers\.1\..*_proj",)), (), "CAUSAL_LM"),
    "vit-conv2d-head": ("vit", ak.LoRA(r=4, alpha=2.5, targets=("embed", "attn.q")),
                        ("classifier",), None),
    "llama-dora": ("llama", ak.DoRA(r=4, alpha=8, targets=("attn.v", "ffn.out")), (),
                   "CAUSAL_LM"),
}


@torch.no_grad()
@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_loads_in_peft_with_equal_outputs(case: str, tmp_path: Path) -> None:
    family, config, heads, task = EXPORT_CASES[case]
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", config)
    perturb(kit, "a")
    kit.train("a", train_also=heads)
    for path in heads:
        for p in model.get_submodule(path).parameters():
            p.add_(0.5)
    model.eval()
    x = inputs_for(family)
    want = run(model, family, x)
    kit.save("a", tmp_path, format="peft")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["task_type"] == task and cfg["base_model_name_or_path"] is None
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert all(LORA_KEY.fullmatch(k) for k in keys if "classifier" not in k)
    pm = peft.PeftModel.from_pretrained(build(family), tmp_path).eval()
    assert _peft_sites(pm) == [s.host for s in kit.record("a").sites]
    torch.testing.assert_close(run(pm, family, x), want, atol=1e-5, rtol=0)


BAD_FIELDS: dict[str, Any] = {
    "peft_type": "BOFT", "bias": "all", "lora_bias": True, "alora_invocation_tokens": [5],
    "rank_pattern": {"q_proj": 8}, "alpha_pattern": {"q_proj": 2}, "layer_replication": [[0, 1]],
    "target_parameters": ["mlp.experts.gate_up_proj"], "trainable_token_indices": [1, 2],
    "target_modules": ["no_such_module"],
}


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS.items(), ids=list(BAD_FIELDS))
def test_unsupported_field_raises_and_leaves_model_alone(field: str, value: Any,
                                                         tmp_path: Path) -> None:
    _peft_checkpoint("llama-layers", tmp_path)
    set_config_field(tmp_path, field, value)
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("keep", ak.LoRA(r=2))
    before = kit_snapshot(model, kit)
    with pytest.raises(ak.LoadError, match=field):
        kit.load(tmp_path)
    assert kit_snapshot(model, kit) == before


def test_checkpoint_for_other_shapes_names_every_tensor(tmp_path: Path) -> None:
    _peft_checkpoint("llama-layers", tmp_path)
    cfg = T.LlamaConfig(**{**_DEC, "hidden_size": 48, "intermediate_size": 80})
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    kit = ak.AdapterKit(model)
    before = kit_snapshot(model, kit)
    with pytest.raises(ak.LoadError) as info:
        kit.load(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert f"({len(keys)} problem(s))" in str(info.value)
    assert all(k in str(info.value) for k in keys)
    assert kit_snapshot(model, kit) == before


def test_dora_checkpoint_needs_the_dora_method(tmp_path: Path, monkeypatch) -> None:
    _peft_checkpoint("llama-dora-rslora", tmp_path)
    monkeypatch.setattr(peft_io, "methods", lambda: [])
    kit = ak.AdapterKit(build("llama"))
    with pytest.raises(ak.LoadError, match=r"use_dora=True.*'dora' method"):
        kit.load(tmp_path)
    assert kit.names == []


class _NotATensor:
    pass


def test_bin_is_read_weights_only(tmp_path: Path) -> None:
    _peft_checkpoint("vit-conv2d-bin", tmp_path)
    torch.save({"x": _NotATensor()}, tmp_path / "adapter_model.bin")
    kit = ak.AdapterKit(build("vit"))
    with pytest.raises(ak.LoadError, match="weights-only"):
        kit.load(tmp_path)
    assert kit.names == []


def test_bottleneck_export_raises(tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.add("b", ak.Bottleneck(reduction=4))
    with pytest.raises(ak.AdapterError, match="bottleneck method"):
        kit.save("b", tmp_path / "b", format="peft")
    assert not (tmp_path / "b").exists()


def test_lora_inside_a_trained_head_cannot_be_exported(tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.add("a", ak.LoRA(targets=("attn.q", "classifier")))
    kit.train("a", train_also=("classifier",))
    with pytest.raises(ak.AdapterError, match="inside a trained head"):
        kit.save("a", tmp_path / "a", format="peft")
