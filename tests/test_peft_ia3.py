"""Interop with Hugging Face PEFT's IA3 checkpoints, checked against PEFT itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.tuners.ia3 import IA3Layer
from safetensors.torch import load_file

import adapterkit as ak

from .helpers import kit_snapshot, perturb, set_config_field
from .models import build, inputs_for, run

_BERT_FFN_OUT = r".*\.layer\.\d+\.output\.dense"
# family, IA3Config kwargs
PEFT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-regex-head": ("bert", dict(target_modules=rf".*\.attention\.self\.(key|value)|{_BERT_FFN_OUT}",
                                     feedforward_modules=_BERT_FFN_OUT, task_type="SEQ_CLS",
                                     modules_to_save=["classifier"])),
    # PEFT's plain endswith: "output.dense" is feedforward in attention.output.dense too
    "bert-list-endswith": ("bert", dict(target_modules=["value", "output.dense"],
                                        feedforward_modules=["output.dense"])),
    "llama-list": ("llama", dict(target_modules=["k_proj", "v_proj", "down_proj"],
                                 feedforward_modules=["down_proj"], task_type="CAUSAL_LM")),
    "llama-exclude-no-ff": ("llama", dict(target_modules=["q_proj", "up_proj"], feedforward_modules=[],
                                          exclude_modules=["model.layers.0.self_attn.q_proj"])),
    "gpt2-conv1d": ("gpt2", dict(target_modules=["c_attn", "mlp.c_proj"],
                                 feedforward_modules=["mlp.c_proj"])),
}


def _randomize(model: torch.nn.Module, seed: int = 3, std: float = 0.2) -> None:
    """ia3_l (and saved heads) away from 1; ``l = 1 + std * N(0, 1)``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if "ia3_l" in name:
                p.copy_(1 + noise)
            elif "modules_to_save" in name:
                p.copy_(noise)


def _peft_checkpoint(case: str, path: Path, std: float = 0.2) -> peft.PeftModel:
    family, kwargs = PEFT_CASES[case]
    pm = peft.get_peft_model(build(family), peft.IA3Config(**kwargs))
    _randomize(pm, std=std)
    pm.eval()
    pm.save_pretrained(path)
    return pm


def _peft_sites(pm: peft.PeftModel) -> list[tuple[str, bool]]:
    return [(n, m.is_feedforward) for n, m in pm.base_model.model.named_modules()
            if isinstance(m, IA3Layer)]


def _our_sites(kit: ak.AdapterKit, name: str) -> list[tuple[str, bool]]:
    return [(h, m.feedforward) for h, m in kit.record(name).modules.items()]


@torch.no_grad()
@pytest.mark.parametrize("case", PEFT_CASES)
def test_peft_ia3_checkpoint_loads_with_peft_outputs(case: str, tmp_path: Path) -> None:
    pm = _peft_checkpoint(case, tmp_path / "ckpt")
    family = PEFT_CASES[case][0]
    x = inputs_for(family)
    want = run(pm, family, x)
    model = build(family)
    kit = ak.AdapterKit(model)
    base = run(model, family, x)
    assert kit.load(tmp_path / "ckpt") == "ckpt"
    assert kit.record("ckpt").spec.name == "ia3"
    assert sorted(_our_sites(kit, "ckpt")) == sorted(_peft_sites(pm))
    kit.activate("ckpt")
    got = run(model, family, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - base).abs().max() > 5e-5  # well above the 1e-5 agreement (BERT's logits are small)
    if PEFT_CASES[case][1].get("modules_to_save"):
        assert kit.record("ckpt").heads == ("classifier",)


def _ulp_half(t: torch.Tensor) -> torch.Tensor:
    """Half a unit in the last place of ``t`` (float32)."""
    return (torch.nextafter(t.abs(), torch.tensor(float("inf"))) - t.abs()) / 2


@pytest.mark.parametrize("std", [0.2, 1.0])
@pytest.mark.parametrize("case", PEFT_CASES)
def test_round_trip_peft_ours_peft(case: str, std: float, tmp_path: Path) -> None:
    """Bit-identical wherever ``l >= 0.5`` (there ``(l - 1) + 1 == l`` exactly in float32) and for
    heads; below 0.5 ``l - 1`` can round, and ``l`` moves by at most half an ulp of ``l - 1``.
    std=1.0 (l ~ N(1, 1), as after ``init_ia3_weights=False``) puts many values below 0.5."""
    _peft_checkpoint(case, tmp_path / "p", std=std)
    kit = ak.AdapterKit(build(PEFT_CASES[case][0]))
    name = kit.load(tmp_path / "p", name="rt")
    kit.save(name, tmp_path / "q", format="peft")
    before = load_file(tmp_path / "p" / "adapter_model.safetensors")
    after = load_file(tmp_path / "q" / "adapter_model.safetensors")
    assert sorted(before) == sorted(after)
    for key, t in before.items():
        assert after[key].dtype == t.dtype and after[key].shape == t.shape, key
        exact = t >= 0.5 if key.endswith(".ia3_l") else torch.ones_like(t, dtype=torch.bool)
        assert torch.equal(after[key][exact], t[exact]), key
        assert ((after[key] - t).abs() <= _ulp_half(t - 1)).all(), key


def test_offset_is_exact_from_one_half_up() -> None:
    """The claim behind the bit-exact round trip, over every float32 in [0.5, 2) and a sample
    above; below 0.5 it is not exact in general, but off by at most half an ulp of ``l - 1``."""
    exact = torch.arange(0x3F000000, 0x40000000, dtype=torch.int32).view(torch.float32)
    g = torch.Generator().manual_seed(0)
    exact = torch.cat([exact, 2 + torch.rand(10**6, generator=g) * 1e6])
    assert torch.equal((exact - 1) + 1, exact)
    low = torch.cat([torch.rand(10**6, generator=g) * 0.5, -torch.rand(10**6, generator=g) * 10])
    back = (low - 1) + 1
    assert not torch.equal(back, low)
    assert ((back - low).abs() <= _ulp_half(low - 1)).all()


# family, config, trained heads, feedforward sites expected
EXPORT_CASES: dict[str, tuple[str, ak.IA3, tuple[str, ...]]] = {
    "bert-default-head": ("bert", ak.IA3(), ("classifier",)),
    "llama-default": ("llama", ak.IA3(), ()),
    "gpt2-conv1d": ("gpt2", ak.IA3(), ()),
    "llama-no-ff": ("llama", ak.IA3(targets=("attn.q", "attn.v"), feedforward=()), ()),
}


@torch.no_grad()
@pytest.mark.parametrize("case", EXPORT_CASES)
def test_ia3_export_loads_in_peft_with_equal_outputs(case: str, tmp_path: Path) -> None:
    family, config, heads = EXPORT_CASES[case]
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
    assert cfg["peft_type"] == "IA3"
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert all(k.endswith(".ia3_l") for k in keys if "classifier" not in k)
    pm = peft.PeftModel.from_pretrained(build(family), tmp_path).eval()
    assert _peft_sites(pm) == _our_sites(kit, "a")
    torch.testing.assert_close(run(pm, family, x), want, atol=1e-5, rtol=0)


BAD_FIELDS: dict[str, Any] = {
    "feedforward_modules": ["down_proj", "gate_proj"],  # not a subset of target_modules
    "target_modules": "all-linear",
    "layers_to_transform": [1],
    "r": 8,
    "trainable_token_indices": [1, 2],
}


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS.items(), ids=list(BAD_FIELDS))
def test_unsupported_ia3_field_raises_and_leaves_model_alone(field: str, value: Any,
                                                             tmp_path: Path) -> None:
    _peft_checkpoint("llama-list", tmp_path)
    set_config_field(tmp_path, field, value)
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("keep", ak.LoRA(r=2))
    before = kit_snapshot(model, kit)
    with pytest.raises(ak.LoadError, match=field):
        kit.load(tmp_path)
    assert kit_snapshot(model, kit) == before


def test_missing_feedforward_modules_raises(tmp_path: Path) -> None:
    _peft_checkpoint("gpt2-conv1d", tmp_path)
    set_config_field(tmp_path, "feedforward_modules", None)
    kit = ak.AdapterKit(build("gpt2"))
    with pytest.raises(ak.LoadError, match="feedforward_modules=None"):
        kit.load(tmp_path)
    assert kit.names == []
