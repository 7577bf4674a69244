"""Bad input gets a clear error, and a failed add or load leaves the model as it was."""

from __future__ import annotations

import json

import pytest
import torch

import adapterkit as ak
from adapterkit.methods.configs import config_from_dict, config_to_dict

from .helpers import hook_counts, perturb
from .models import build, inputs_for, run


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, hook_counts(model))


def _unchanged(model, snap) -> bool:
    state, hooks = snap
    now = model.state_dict()
    return (now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
            and hook_counts(model) == hooks)


def test_unknown_role_lists_roles() -> None:
    kit = ak.AdapterKit(build("llama"))
    with pytest.raises(ak.TargetError, match=r"unknown role 'attn\.query'.*attn\.q.*ffn\.gate"):
        kit.add("x", ak.LoRA(targets=("attn.query",)))


def test_role_missing_in_layout() -> None:
    kit = ak.AdapterKit(build("bert"))
    with pytest.raises(ak.TargetError, match=r"unknown role 'ffn\.gate' for layout 'bert'"):
        kit.add("x", ak.LoRA(targets=("ffn.gate",)))


def test_target_matching_nothing_names_closest_modules() -> None:
    kit = ak.AdapterKit(build("bert"))
    with pytest.raises(ak.TargetError, match=r"'quer' matches no module.*'query'"):
        kit.add("x", ak.LoRA(targets=("quer",)))
    with pytest.raises(ak.TargetError, match="not a valid regular expression"):
        kit.add("x", ak.LoRA(targets=("(query",)))


def test_roles_on_a_model_without_layout() -> None:
    kit = ak.AdapterKit(build("mlp"))
    with pytest.raises(ak.TargetError, match="has no layout; use regular expressions"):
        kit.add("x", ak.LoRA())


def test_unsupported_module_type() -> None:
    kit = ak.AdapterKit(build("bert"))
    with pytest.raises(ak.TargetError, match=r"LoRA supports .*LayerNorm"):
        kit.add("x", ak.LoRA(targets=("LayerNorm",)))


def test_duplicate_and_bad_names() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("x", ak.LoRA())
    snap = _snapshot(model)
    with pytest.raises(ak.AdapterNameError, match="exists already"):
        kit.add("x", ak.LoRA())
    for bad in ("a.b", "", "__base__", "sp ace"):
        with pytest.raises(ak.AdapterNameError, match="bad adapter name"):
            kit.add(bad, ak.LoRA())
    with pytest.raises(ak.AdapterNameError, match=r"no adapter named 'y'.*\['x'\]"):
        kit.activate("y")
    assert _unchanged(model, snap) and kit.names == ["x"]


def test_failed_add_leaves_model_unchanged() -> None:
    model = build("llama")
    snap = _snapshot(model)
    kit = ak.AdapterKit(model)
    with pytest.raises(ak.TargetError):
        kit.add("x", ak.LoRA(targets=("attn.q", "no_such_module")))
    assert _unchanged(model, snap) and kit.names == []


def test_config_validation_and_unknown_fields() -> None:
    with pytest.raises(ak.ConfigError, match="positive integer"):
        ak.LoRA(r=0)
    with pytest.raises(ak.ConfigError, match="placement must be one of"):
        ak.Bottleneck(placement="middle")
    data = config_to_dict(ak.LoRA(r=4))
    assert config_from_dict(data) == ak.LoRA(r=4)
    with pytest.raises(ak.ConfigError, match=r"unknown field\(s\) for LoRA: 'rank' .*did you mean"):
        config_from_dict({**data, "rank": 4})
    with pytest.raises(ak.ConfigError, match="unknown method 'lorax'"):
        config_from_dict({"method": "lorax"})


def _saved(tmp_path, family="bert"):
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("x", ak.LoRA(r=4))
    perturb(kit, "x")
    kit.save("x", tmp_path / "x")
    return tmp_path / "x"


def test_load_into_other_shapes_names_every_mismatch(tmp_path) -> None:
    d = _saved(tmp_path)
    import transformers as T

    from .models import _ENC
    other = T.BertForSequenceClassification(T.BertConfig(**{**_ENC, "hidden_size": 48})).eval()
    snap = _snapshot(other)
    kit = ak.AdapterKit(other)
    with pytest.raises(ak.LoadError, match=r"8 problem\(s\)") as err:
        kit.load(d)
    assert str(err.value).count("file has shape") == 8
    assert _unchanged(other, snap) and kit.names == []


def test_load_into_other_architecture(tmp_path) -> None:
    d = _saved(tmp_path)
    kit = ak.AdapterKit(build("gpt2"))
    with pytest.raises(ak.LoadError, match=r"(?s)model_type 'bert'.*'gpt2'.*missing tensor .*"
                                           "unexpected tensor"):
        kit.load(d)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupt_weights(tmp_path, damage: str) -> None:
    d = _saved(tmp_path)
    w = d / "adapter.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:-100])
    elif damage == "garbage":
        w.write_bytes(b"\x00" * 64)
    else:
        w.unlink()
    model = build("bert")
    snap = _snapshot(model)
    kit = ak.AdapterKit(model)
    pattern = "missing adapter.safetensors" if damage == "delete" else "corrupt or truncated"
    with pytest.raises(ak.LoadError, match=pattern):
        kit.load(d)
    assert _unchanged(model, snap)


def test_corrupt_config(tmp_path) -> None:
    d = _saved(tmp_path)
    cfg = d / "adapter_config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(ak.LoadError, match="not valid JSON"):
        ak.AdapterKit(build("bert")).load(d)
    meta = json.loads(text)
    meta["config"]["rank"] = 3
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ak.LoadError, match=r"unknown field.*'rank'"):
        ak.AdapterKit(build("bert")).load(d)
    meta = json.loads(text)
    meta["format_version"] = 99
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ak.LoadError, match="format_version 99"):
        ak.AdapterKit(build("bert")).load(d)


def test_missing_directory(tmp_path) -> None:
    with pytest.raises(ak.LoadError, match="no adapter directory"):
        ak.AdapterKit(build("bert")).load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ak.LoadError, match=r"missing adapter_config.json.*holds \[\]"):
        ak.AdapterKit(build("bert")).load(tmp_path / "empty")


def test_load_duplicate_name(tmp_path) -> None:
    d = _saved(tmp_path)
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.load(d)
    with pytest.raises(ak.AdapterNameError, match="exists already"):
        kit.load(d)
    assert kit.load(d, name="y") == "y"


def test_train_also_unknown_module() -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.add("x", ak.LoRA())
    with pytest.raises(ak.TargetError, match=r"'clasifier' matches no module.*classifier"):
        kit.train("x", train_also=("clasifier",))


def test_kit_is_idempotent_and_outputs_follow_activation() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    assert ak.AdapterKit(model) is kit
    kit.add("x", ak.LoRA())
    perturb(kit, "x")
    x = inputs_for("bert")
    base = run(model, "bert", x)
    kit.activate("x")
    assert not torch.allclose(run(model, "bert", x), base)
    kit.activate(None)
    assert torch.equal(run(model, "bert", x), base)


def test_head_hosting_another_adapter_saves_only_its_own_tensors(tmp_path) -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("other", ak.LoRA(r=2, targets=("classifier",)))
    kit.add("a", ak.LoRA(r=4))
    kit.train("a", train_also=("classifier",))
    kit.save("a", tmp_path / "a")
    kit2 = ak.AdapterKit(build("bert"))
    assert kit2.load(tmp_path / "a") == "a"
    assert kit2.names == ["a"]


def test_deepcopy_of_a_model_with_adapters_is_independent() -> None:
    import copy

    model = build("bert")
    x = inputs_for("bert")
    base = run(model, "bert", x)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.Bottleneck(reduction=4, mode="parallel"))
    kit.add("b", ak.LoRA())
    perturb(kit, "a")
    perturb(kit, "b", seed=3)
    kit.activate(["b", "a"])
    want = run(model, "bert", x)
    twin = copy.deepcopy(model)
    kit2 = ak.AdapterKit(twin)
    assert kit2 is not kit and kit2.model is twin and kit2.names == ["a", "b"]
    assert torch.equal(run(twin, "bert", x), want)
    kit2.remove("a")
    kit2.remove("b")
    assert torch.equal(run(twin, "bert", x), base)
    assert set(twin.state_dict()) == {k for k in model.state_dict() if ".adapterkit." not in k}
    assert torch.equal(run(model, "bert", x), want) and kit.names == ["a", "b"]


def test_failed_train_leaves_no_quantisation_behind() -> None:
    from torch.nn.utils import parametrize

    kit = ak.AdapterKit(build("bert"))
    kit.add("x", ak.LoRA())
    with pytest.raises(ak.TargetError, match="'nope' matches no module"):
        kit.train("x", train_also=("nope",), quantize_bits=1)
    record = kit.record("x")
    assert not any(parametrize.is_parametrized(m) for m in record.modules.values())
    assert kit.active == ()


def test_a_second_kit_with_another_layout() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    assert kit.layout.family == "bert"
    assert ak.AdapterKit(model, layout="roberta") is kit and kit.layout.family == "roberta"
    kit.add("a", ak.LoRA(r=2))
    assert ak.AdapterKit(model, layout="roberta") is kit  # the same layout: fine
    with pytest.raises(ak.ConfigError, match=r"holds adapters \['a'\]; remove them"):
        ak.AdapterKit(model, layout="bert")
    assert kit.layout.family == "roberta"
