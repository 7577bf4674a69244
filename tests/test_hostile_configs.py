"""kit.load of malformed ``adapter_config.json`` files, for native, PEFT (LoRA, IA3, prompt tuning)
and AdapterHub (LoRA, bottleneck) checkpoints: text that is not strict JSON (truncated, invalid
UTF-8, NaN, 5000-digit integers, nesting 100,000 deep, duplicate keys), JSON that is not an object,
any field of the config replaced by values of any type or by nested garbage, keys missing, and
unknown methods. Each raises LoadError or ConfigError naming the file and leaves the model as it
was, or loads an adapter whose tensors have their declared shapes; nothing else, and no hang."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import adapterkit as ak

from .hostile import Target, load_damaged, make_targets, write_case

#: examples per format and property test (each load of a tiny model takes a few milliseconds)
MAX_EXAMPLES = {"text": 25, "fields": 60}
FORMATS = ("native", "peft", "peft-ia3", "peft-prompt", "adapterhub", "adapterhub-bn")
#: where each format names its method, and so where an unknown one goes
METHOD_KEY = {"native": ("config", "method"), "peft": ("peft_type",), "peft-ia3": ("peft_type",),
              "peft-prompt": ("peft_type",), "adapterhub": ("config", "architecture"),
              "adapterhub-bn": ("config",)}
KNOWN_METHODS = {"LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING", "bottleneck", "seq_bn",
                 "double_seq_bn", "par_bn", "pfeiffer", "houlsby", "parallel",
                 *(m.name for m in ak.methods())}
HOSTILE_STRINGS = ["", "(.*)*x", "(a|.)+$", "((q)+)+", "../..", "\x00", "attn.q", "lora", "LORA",
                   "IA3", "PROMPT_TUNING", "seq_bn", "*", "[", "-1", "__base__", "classifier",
                   "a.b", "bert", ".*", "query"]
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                  allow_infinity=False)
            | st.sampled_from([5e-324, 1e-310, 1e-300, 2**63, -(2**63), 10**400])
            | st.text(max_size=8) | st.sampled_from(HOSTILE_STRINGS))
_KEYS = st.text(max_size=6) | st.sampled_from(["method", "r", "targets", "name", "config"])
JSON = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(_KEYS, c,
                                                                                   max_size=4),
                    max_leaves=12)


def _settings(kind: str) -> Any:
    return settings(max_examples=MAX_EXAMPLES[kind], deadline=timedelta(seconds=10),
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return make_targets(tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cases")


def _meta(target: Target) -> dict[str, Any]:
    return json.loads((target.pristine / "adapter_config.json").read_text())


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and index path into a JSON value."""
    out = [at] if at else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def _set(meta: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    *parents, last = path
    node: Any = meta
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()


@st.composite
def bad_text(draw: st.DrawFn, text: str) -> bytes:
    """Bytes that are no strict JSON (every branch must be refused)."""
    core = text.rstrip()
    kind = draw(st.sampled_from(["cut", "utf8", "constant", "digits", "deep", "duplicate",
                                 "bytes"]))
    at = draw(st.integers(1, len(core) - 1))
    if kind == "cut":
        return core[:at].encode()
    if kind == "utf8":
        return core[:at].encode() + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) \
            + core[at:].encode()
    if kind == "constant":
        value = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    elif kind == "digits":
        value = "1" * draw(st.integers(4301, 20_000))
    elif kind == "deep":
        depth = draw(st.integers(2_000, 100_000))
        value = "[" * depth + "]" * depth
    elif kind == "duplicate":  # a key of the config a second time, with any value
        key = draw(st.sampled_from(sorted(json.loads(text))))
        return ("{" + json.dumps(key) + ": " + json.dumps(draw(JSON)) + ", " + core[1:]).encode()
    else:
        return draw(st.binary(max_size=64).filter(_not_an_object))
    return ('{"hostile": ' + value + ", " + core[1:]).encode()  # in front of the real fields


def _not_an_object(raw: bytes) -> bool:
    try:
        return not isinstance(json.loads(raw), dict)
    except ValueError:
        return True


@pytest.mark.parametrize("fmt", FORMATS)
@_settings("text")
@given(data=st.data())
def test_config_text_that_is_not_a_json_object_is_refused(targets: dict[str, Target],
                                                          scratch: Path, fmt: str,
                                                          data: st.DataObject) -> None:
    text = (targets[fmt].pristine / "adapter_config.json").read_text()
    raw = data.draw(bad_text(text) | JSON.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: json.dumps(v).encode()), label="config bytes")
    load_damaged(targets[fmt], write_case(targets[fmt], scratch, config=raw), must_fail=True)


@st.composite
def bad_fields(draw: st.DrawFn, meta: dict[str, Any], fmt: str) -> tuple[dict[str, Any], bool]:
    """(the config with fields replaced, removed, added or its method unknown, must it fail)."""
    paths = _paths(meta)
    kind = draw(st.sampled_from(["replace", "remove", "add", "method"]))
    if kind == "method":
        _set(meta, METHOD_KEY[fmt], draw(_SCALARS.filter(
            lambda v: v is not None and v not in KNOWN_METHODS)))
        return meta, True
    for _ in range(draw(st.integers(1, 3))):
        shallow = [p for p in paths if len(p) <= 2]  # the fields loaders read, more often
        path = draw(st.sampled_from(shallow) | st.sampled_from(paths))
        if kind == "add":
            parent = path[:-1]
            node: Any = meta
            for p in parent:
                node = node[p]
            if isinstance(node, dict):
                _set(meta, (*parent, draw(_KEYS)), draw(JSON))
        else:
            _set(meta, path, _DELETE if kind == "remove" else draw(JSON))
        paths = _paths(meta)
        if not paths:
            break
    return meta, False


@pytest.mark.parametrize("fmt", FORMATS)
@_settings("fields")
@given(data=st.data())
def test_config_fields_of_any_value_are_refused_or_load(targets: dict[str, Target], scratch: Path,
                                                        fmt: str, data: st.DataObject) -> None:
    meta, must_fail = data.draw(bad_fields(_meta(targets[fmt]), fmt), label="config")
    raw = json.dumps(meta).encode()
    event(load_damaged(targets[fmt], write_case(targets[fmt], scratch, config=raw),
                       must_fail=must_fail))


@pytest.mark.parametrize(("fmt", "where"), [("native", ("config", "targets")),
                                           ("peft", ("target_modules",)),
                                           ("peft-ia3", ("target_modules",))])
@pytest.mark.parametrize("pattern", ["(.*)*x", "((a|b)+)+", r"(\w+\.?)*z"])
def test_explosive_regular_expressions_are_refused(targets: dict[str, Target], scratch: Path,
                                                   fmt: str, where: tuple[str, ...],
                                                   pattern: str) -> None:
    """A pattern whose matching time explodes on module paths (the formats that name modules by
    pattern): a file must not stall kit.load."""
    meta = _meta(targets[fmt])
    _set(meta, where, [pattern] if fmt == "native" else pattern)
    case = write_case(targets[fmt], scratch, config=json.dumps(meta).encode())
    assert load_damaged(targets[fmt], case, must_fail=True) == "refused"
