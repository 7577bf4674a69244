"""AdapterHub checkpoints (made by scripts/make_adapterhub_fixtures.sh) load and reproduce the
outputs recorded when they were generated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import adapterkit as ak

FIX = Path(__file__).parent / "fixtures" / "adapterhub"
CASES = {"seq_bn": "seq_bn", "double_seq_bn": "double_seq_bn", "par_bn": "par_bn",
         "lora_bin": "lora", "lora_safetensors": "lora"}


def _base() -> T.BertModel:
    cfg = T.BertConfig.from_dict(json.loads((FIX / "base_config.json").read_text()))
    model = T.BertModel(cfg).eval()
    missing, unexpected = model.load_state_dict(load_file(FIX / "base_model.safetensors"), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return model


def _outputs(model: T.BertModel, expected: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"],
                     token_type_ids=torch.zeros_like(expected["input_ids"])).last_hidden_state


@pytest.mark.parametrize("directory", sorted(CASES))
def test_fixture_reproduces_recorded_outputs(directory: str) -> None:
    expected = load_file(FIX / "expected_outputs.safetensors")
    model = _base()
    torch.testing.assert_close(_outputs(model, expected), expected["base_last_hidden_state"],
                               atol=1e-5, rtol=0)
    kit = ak.AdapterKit(model)
    name = kit.load(FIX / directory)
    assert name == CASES[directory]
    kit.activate(name)
    want = expected[f"{CASES[directory]}_last_hidden_state"]
    assert (want - expected["base_last_hidden_state"]).abs().max() > 0.05  # not the identity
    torch.testing.assert_close(_outputs(model, expected), want, atol=1e-5, rtol=0)


def test_loaded_adapter_resaves_natively(tmp_path) -> None:
    model = _base()
    kit = ak.AdapterKit(model)
    kit.load(FIX / "seq_bn", name="pf")
    kit.save("pf", tmp_path / "pf")
    kit2 = ak.AdapterKit(_base())
    assert kit2.load(tmp_path / "pf") == "pf"
    assert kit2.config("pf") == kit.config("pf")


def _copy(tmp_path: Path, src: str, **changes) -> Path:
    d = tmp_path / src
    shutil.copytree(FIX / src, d)
    meta = json.loads((d / "adapter_config.json").read_text())
    meta["config"].update(changes)
    (d / "adapter_config.json").write_text(json.dumps(meta))
    return d


@pytest.mark.parametrize(("src", "change", "message"), [
    ("seq_bn", {"use_gating": True}, "use_gating=True"),
    ("seq_bn", {"leave_out": [0]}, "leave_out=\\[0\\]"),
    ("seq_bn", {"reduction_factor": {"default": 4}}, "one number for all layers"),
    ("lora_bin", {"composition_mode": "scale"}, "composition_mode='scale'"),
    ("lora_bin", {"architecture": "prefix_tuning"}, "architecture 'prefix_tuning' is not supported"),
])
def test_unsupported_settings_are_named(tmp_path, src: str, change: dict, message: str) -> None:
    model = _base()
    keys = set(model.state_dict())
    kit = ak.AdapterKit(model)
    with pytest.raises(ak.LoadError, match=message):
        kit.load(_copy(tmp_path, src, **change))
    assert kit.names == [] and set(model.state_dict()) == keys


def test_unsafe_bin_is_refused(tmp_path) -> None:
    d = _copy(tmp_path, "lora_bin")
    torch.save({"x": object()}, d / "pytorch_adapter.bin")  # a pickle that is not plain tensors
    with pytest.raises(ak.LoadError, match="cannot be read safely"):
        ak.AdapterKit(_base()).load(d)


def test_bottleneck_needs_a_bert_family_model() -> None:
    from .models import build

    with pytest.raises(ak.LoadError, match="load into bert, roberta and xlm-roberta"):
        ak.AdapterKit(build("llama")).load(FIX / "seq_bn")
