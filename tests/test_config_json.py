"""Every registered method config survives ``json.dumps(config_to_dict(c))`` ->
``config_from_dict(json.loads(...))`` with its class, every field's value and type (tuples stay
tuples, nested configs keep their classes), and bad JSON raises ConfigError.

The configs are derived from the registry, so a method registered later is covered without
editing this file: each field gets non-default values derived from its type (bools flipped,
numbers changed, optional fields set, target tuples replaced). Fields whose type gives no value
(choices among strings, nested structures) take theirs from ``EXAMPLES``, and a config that is not
valid with its defaults from ``BASE``; a field left without a non-default value fails
``test_every_field_of_every_method_gets_a_non_default_value``, naming the entry to add.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest

import adapterkit as ak
from adapterkit.methods import get_method
from adapterkit.methods.configs import config_from_dict, config_to_dict

#: what a config needs beyond its defaults to be valid (required fields, defaults that do not
#: validate on their own)
BASE: dict[str, dict[str, Any]] = {
    "eigenlora": {"basis": "subspaces/qv.safetensors"},
    "fusion": {"adapters": ("a", "b")},
    "mixture": {"experts": ("a", "b")},
    "union": {"members": (ak.LoRA(), ak.IA3())},
}

#: non-default values for fields whose type gives none (string choices, nested structures)
EXAMPLES: dict[str, dict[str, tuple[Any, ...]]] = {
    "adapterbias": {"placement": ("attn", "both")},
    "bottleneck": {"placement": ("attn", "both"), "mode": ("parallel",),
                   "non_linearity": ("gelu", "identity")},
    "compacter": {"placement": ("attn", "both"), "non_linearity": ("relu", "tanh")},
    "eigenlora": {"basis": ("elsewhere/basis.safetensors",), "digest": ("0f" * 32,)},
    "fusion": {"adapters": (("x", "y", "z"),)},
    "hyper": {"adapter": ("bottleneck",), "placement": ("attn", "both")},
    "invertible": {"coupling": ("glow",), "non_linearity": ("gelu", "tanh")},
    "mixture": {"experts": (("x", "y", "z"),), "router": ("sequence",)},
    "lora": {"init": ("gaussian", "zeros", "pissa"),
             "rank_pattern": ((("q_proj", 2), (r".*\.v_proj", 4)),)},
    "prompt": {"init": ("vocab",)},
    "shira": {"mask_type": ("magnitude",)},
    "sparse_adapter": {"placement": ("both",), "mode": ("parallel",), "non_linearity": ("gelu",),
                       "criterion": ("magnitude", "random"), "scope": ("layer",)},
    "union": {"members": (
        (ak.PrefixTuning(num_tokens=3, reparameterize=True, hidden=8),
         ak.Bottleneck(mode="parallel", scaling=4.0, targets=("fc1",))),
        (ak.LoRA(r=2, rank_pattern=(("q", 4),)), ak.IA3(init_ones=False), ak.Bottleneck(reduction=2.5)),
    )},
}

_TARGETS = (("attn.k",), ("ffn.in", "ffn.out"), (r"layers\.\d+\.mlp\.fc\d",))
PER_FIELD = 3  # derived values tried per field


def _methods() -> list[str]:
    return [info.name for info in ak.methods()]


def _base(method: str) -> Any:
    return get_method(method).config_cls(**BASE.get(method, {}))


def _derived(tp: Any, default: Any) -> list[Any]:
    """Values of type ``tp`` other than ``default``, from the type alone."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        values = [] if default is None else [None]
        return values + [v for a in inner for v in _derived(a, default)]
    if tp is bool:
        return [not default]
    if tp is int:
        start = default if isinstance(default, int) and not isinstance(default, bool) else 0
        return [start + 1, start + 2, 2 * start + 3]
    if tp is float:
        start = float(default) if isinstance(default, (int, float)) else 0.0
        return [start * 0.7 + 0.05, start + 0.5, start * 3 + 0.125]
    if origin is tuple and args == (str, Ellipsis):
        return list(_TARGETS)
    return []


def _candidates(method: str, field: dataclasses.Field, base: Any) -> list[Any]:
    if field.name in EXAMPLES.get(method, {}):
        return list(EXAMPLES[method][field.name])
    hints = typing.get_type_hints(type(base))
    return _derived(hints[field.name], getattr(base, field.name))[:PER_FIELD]


def _variants(method: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """(field, config) pairs, each config its base with one field changed to a valid non-default
    value, plus one config with every field changed that can be at once; and the fields that got
    no valid non-default value."""
    cls, base = get_method(method).config_cls, _base(method)
    kwargs = dict(BASE.get(method, {}))
    variants, missing, combined = [], [], dict(kwargs)
    for field in dataclasses.fields(cls):
        found = False
        for value in _candidates(method, field, base):
            try:
                config = cls(**{**kwargs, field.name: value})
            except ak.ConfigError:
                continue
            if getattr(config, field.name) == getattr(base, field.name):
                continue
            variants.append((field.name, config))
            found = True
            try:
                cls(**{**combined, field.name: value})
                combined[field.name] = value
            except ak.ConfigError:
                pass
        if not found:
            missing.append(field.name)
    variants.append(("*", cls(**combined)))
    return variants, missing


def _cases() -> list[Any]:
    """The round-trip cases; a method whose config is not valid with its defaults and ``BASE``
    has none here and fails the coverage test instead."""
    cases = []
    for method in _methods():
        try:
            variants = _variants(method)[0]
        except ak.ConfigError:
            continue
        cases += [pytest.param(config, id=f"{method}-{field}-{i}")
                  for i, (field, config) in enumerate(variants)]
    return cases


CASES = _cases()


def assert_same(want: Any, got: Any, where: str = "config") -> None:
    """Equal values of the same types, all the way down."""
    assert type(got) is type(want), f"{where}: {type(want).__name__} came back as {type(got).__name__}"
    if dataclasses.is_dataclass(want):
        for field in dataclasses.fields(want):
            assert_same(getattr(want, field.name), getattr(got, field.name), f"{where}.{field.name}")
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want), f"{where}: length {len(want)} came back as {len(got)}"
        for i, (a, b) in enumerate(zip(want, got)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same(want[key], got[key], f"{where}[{key!r}]")
    else:
        assert got == want, f"{where}: {want!r} came back as {got!r}"


def test_every_field_of_every_method_gets_a_non_default_value() -> None:
    problems = []
    for method in _methods():
        try:
            missing = _variants(method)[1]
        except ak.ConfigError as exc:
            problems.append(f"{method}: not valid with its defaults ({exc}); add BASE[{method!r}]")
            continue
        problems += [f"{method}.{name}: add EXAMPLES[{method!r}][{name!r}]" for name in missing]
    assert not problems, "fields without a valid non-default value:\n" + "\n".join(problems)


def test_tables_name_registered_methods() -> None:
    assert set(BASE) | set(EXAMPLES) <= set(_methods())


@pytest.mark.parametrize("config", CASES)
def test_config_survives_a_json_round_trip(config: Any) -> None:
    text = json.dumps(config_to_dict(config))
    back = config_from_dict(json.loads(text))
    assert_same(config, back)
    assert back == config
    assert json.dumps(config_to_dict(back)) == text


def _json_types(hint: Any) -> bool:
    """True when ``hint`` is built from JSON-ready types only (nested configs are ``Any``)."""
    if hint in (bool, int, float, str, type(None), Any, Ellipsis):
        return True
    origin = typing.get_origin(hint)
    return origin in (tuple, typing.Union, types.UnionType) and all(
        _json_types(a) for a in typing.get_args(hint))


@pytest.mark.parametrize("method", _methods())
def test_configs_hold_plain_data(method: str) -> None:
    """No tensors or path objects in configs: EigenLoRA names its basis file by a string path,
    and the union's members are tagged dicts in JSON."""
    cls = get_method(method).config_cls
    bad = {k: v for k, v in typing.get_type_hints(cls).items() if not _json_types(v)}
    assert not bad, f"{cls.__name__} fields that JSON cannot hold: {bad}"


def test_eigenlora_basis_is_a_string_path() -> None:
    config = ak.EigenLoRA(basis="bases/qv.safetensors", k=4)
    assert config_to_dict(config)["basis"] == "bases/qv.safetensors"
    with pytest.raises(ak.ConfigError, match="path of a basis file"):
        ak.EigenLoRA(basis=Path("bases/qv.safetensors"))  # type: ignore[arg-type]


def test_nested_configs_are_tagged_dicts_and_come_back_as_tuples() -> None:
    union = ak.UniPELT(r=2)
    data = json.loads(json.dumps(config_to_dict(union)))
    assert [m["method"] for m in data["members"]] == ["lora", "prefix", "bottleneck"]
    back = config_from_dict(data)
    assert type(back.members) is tuple and type(back.members[0].targets) is tuple


@pytest.mark.parametrize("method", _methods())
def test_unknown_fields_raise(method: str) -> None:
    data = config_to_dict(_base(method))
    with pytest.raises(ak.ConfigError, match="unknown field"):
        config_from_dict({**data, "not_a_field": 1})


@pytest.mark.parametrize(("data", "match"), [
    ({"method": "loar", "r": 4}, "unknown method 'loar'"),
    ({"method": 3}, "unknown method"),
    ({"r": 4}, "needs a 'method' key"),
    ([{"method": "lora"}], "needs a 'method' key"),
    ({"method": "lora", "rank": 4}, "unknown field.*'rank'"),
    ({"method": "lora", "r": 0}, "LoRA.r must be a positive integer"),
    ({"method": "union", "members": [{"method": "lora", "rr": 2}, {"method": "ia3"}]},
     "unknown field.*'rr'"),
    ({"method": "union", "members": [{"method": "lorax"}, {"method": "ia3"}]}, "unknown method"),
    ({"method": "union", "members": [{"r": 2}, {"method": "ia3"}]}, "must be method configs"),
])
def test_bad_json_raises_config_error(data: Any, match: str) -> None:
    with pytest.raises(ak.ConfigError, match=match):
        config_from_dict(data)
