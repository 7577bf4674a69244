"""Property tests of method configs as JSON, for every registered method (``adapterkit.methods()``,
so a method registered later is covered too): a config built from generated field values survives
``config_to_dict`` -> ``json`` -> ``config_from_dict`` as an equal config of the same types, and any
value of any JSON type, in any field or in place of the whole config, gives a config or a
ConfigError and nothing else.

Field values come from the field's type (``bool``, ``int``, ``float``, ``str``, optional and tuple
types), widened past what each config allows, and from the per-field examples of
``tests/test_config_json.py`` (string choices, nested configs)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import adapterkit as ak
from adapterkit.methods import get_method
from adapterkit.methods.configs import config_from_dict, config_to_dict, to_jsonable

from .test_config_json import _TARGETS, BASE, EXAMPLES, assert_same

#: examples per method and property test (a config is built in microseconds)
MAX_EXAMPLES = {"round_trip": 30, "any_value": 30, "whole": 100}
METHODS = [info.name for info in ak.methods()]
_SETTINGS = {"deadline": 2000, "suppress_health_check": [HealthCheck.too_slow,
                                                          HealthCheck.filter_too_much]}

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["attn.q", "(.*)*x", "lora", "gelu", "both", "random", "method"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.text(max_size=5) | st.sampled_from(["method", "r", "targets", "members"]), c,
        max_size=4),
    max_leaves=10)


def _typed(hint: Any) -> st.SearchStrategy[Any]:
    """JSON values of the type ``hint`` (as config_to_dict writes them), not only valid ones;
    nothing for ``Any`` (nested configs, which come from EXAMPLES)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_typed(a) for a in args])
    if hint is type(None):
        return st.none()
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-2, 64) | st.integers()
    if hint is float:
        return (st.floats(-2, 64, allow_nan=False) | st.integers(-2, 64)
                | st.floats(allow_nan=False, allow_infinity=False))
    if hint is str:
        return st.text(max_size=8)
    if origin is tuple and args[1:] == (Ellipsis,):
        if args[0] is Any:
            return st.nothing()
        item = st.sampled_from([t for ts in _TARGETS for t in ts]) | st.text(max_size=6) \
            if args[0] is str else _typed(args[0])
        return st.lists(item, max_size=3)
    if origin is tuple:
        return st.tuples(*[_typed(a) for a in args]).map(list)
    return st.nothing()  # Any: nested configs come from EXAMPLES


@st.composite
def field_values(draw: st.DrawFn, method: str) -> dict[str, Any]:
    """A JSON config of ``method``: its BASE entries, then some fields given generated values."""
    cls = get_method(method).config_cls
    hints = typing.get_type_hints(cls)
    data: dict[str, Any] = {"method": method, **to_jsonable(BASE.get(method, {}))}
    for f in dataclasses.fields(cls):
        if not draw(st.booleans()):
            continue
        examples = [to_jsonable(v) for v in EXAMPLES.get(method, {}).get(f.name, ())]
        pool = _typed(hints[f.name])
        if examples:
            pool = st.sampled_from(examples) | pool
        elif pool.is_empty:
            continue
        data[f.name] = draw(pool)
    return data


def _round_trip(config: Any) -> None:
    text = json.dumps(config_to_dict(config), allow_nan=False)
    back = config_from_dict(json.loads(text))
    assert_same(config, back)
    assert back == config
    assert json.dumps(config_to_dict(back), allow_nan=False) == text


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=MAX_EXAMPLES["round_trip"], **_SETTINGS)
@given(data=st.data())
def test_valid_generated_configs_survive_a_json_round_trip(method: str, data: st.DataObject) -> None:
    raw = data.draw(field_values(method), label="config")
    try:
        config = config_from_dict(raw)
    except ak.ConfigError:
        assume(False)  # values this config refuses: the next test's business
        return
    _round_trip(config)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=MAX_EXAMPLES["any_value"], **_SETTINGS)
@given(data=st.data())
def test_any_value_in_any_field_gives_a_config_or_config_error(method: str,
                                                                data: st.DataObject) -> None:
    raw = data.draw(field_values(method), label="config")
    names = [f.name for f in dataclasses.fields(get_method(method).config_cls)]
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3), label="fields"):
        raw[name] = data.draw(_JSON, label=name)
    try:
        config = config_from_dict(raw)
    except ak.ConfigError as exc:
        assert str(exc)
        return
    _round_trip(config)


@settings(max_examples=MAX_EXAMPLES["whole"], **_SETTINGS)
@given(raw=_JSON | st.dictionaries(st.just("method") | st.text(max_size=5),
                                   _JSON | st.sampled_from(METHODS), min_size=1))
def test_any_json_in_place_of_a_config_gives_a_config_or_config_error(raw: Any) -> None:
    try:
        config = config_from_dict(raw)
    except ak.ConfigError as exc:
        assert str(exc)
        return
    _round_trip(config)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("r", True, r"LoRA\.r must be int, got True"),
    ("alpha", float("nan"), r"LoRA\.alpha must be float, got nan"),
    ("alpha", 10**400, r"LoRA\.alpha must be float"),
    ("targets", 5, r"LoRA\.targets must be tuple\[str, \.\.\.\], got 5"),
    ("targets", [{"method": "lora"}], r"LoRA\.targets must be"),
    ("rank_pattern", [["q", 2, 3]], r"LoRA\.rank_pattern must be"),
])
def test_values_of_the_wrong_json_type_are_named(field: str, value: Any, match: str) -> None:
    with pytest.raises(ak.ConfigError, match=match):
        config_from_dict({"method": "lora", field: value})
