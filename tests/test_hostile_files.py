"""kit.load of hostile safetensors files, in the native, PEFT and AdapterHub formats: truncated at
any offset, bit-flipped anywhere, and with forged headers (shapes larger than the file, overlapping
or out-of-range data_offsets, unknown dtypes, non-object JSON, duplicate keys, huge or too long
header-length prefixes). A refusal is a LoadError naming the file that leaves the model as it was;
a forged header is refused before any tensor is made; a bit flip that still parses may load, with
every tensor in its declared shape and finite. ``read_safetensors`` is also checked against the
safetensors library's own reader on the same damaged bytes."""

from __future__ import annotations

import json
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save_file

import adapterkit as ak
from adapterkit.core import checkpoint
from adapterkit.core.checkpoint import DTYPES, read_safetensors

from .hostile import Target, join, load_damaged, make_targets, split, write_case

#: examples per property test (each load of a tiny model takes a few milliseconds)
MAX_EXAMPLES = {"truncate": 30, "flip": 50, "forge": 80, "differential": 200}
FORMATS = ("native", "peft", "adapterhub")


def allowed_peak(size: int) -> int:
    """What reading a file of ``size`` bytes may allocate at most (Python objects of its header
    included): a forged length or shape of megabytes or more exceeds it."""
    return 64 * size + 2**20


def _settings(kind: str) -> Any:
    return settings(max_examples=MAX_EXAMPLES[kind], deadline=timedelta(seconds=10),
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return make_targets(tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cases")


def _weights(target: Target) -> bytes:
    return (target.pristine / target.weights).read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
@_settings("truncate")
@given(data=st.data())
def test_truncated_weights_are_refused(targets: dict[str, Target], scratch: Path, fmt: str,
                                       data: st.DataObject) -> None:
    raw = _weights(targets[fmt])
    cut = data.draw(st.integers(0, len(raw) - 1), label="length kept")
    load_damaged(targets[fmt], write_case(targets[fmt], scratch, weights=raw[:cut]), must_fail=True)


def _flip(raw: bytes, bits: list[int]) -> bytes:
    out = bytearray(raw)
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


@pytest.mark.parametrize("fmt", FORMATS)
@_settings("flip")
@given(data=st.data())
def test_bit_flips_are_refused_or_load_in_shape(targets: dict[str, Target], scratch: Path,
                                                fmt: str, data: st.DataObject) -> None:
    raw = _weights(targets[fmt])
    bits = data.draw(st.lists(st.integers(0, 8 * len(raw) - 1), min_size=1, max_size=3))
    load_damaged(targets[fmt], write_case(targets[fmt], scratch, weights=_flip(raw, bits)))


# -- forged headers ------------------------------------------------------------------------------
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                          max_size=3),
                     max_leaves=6)
_BAD_DTYPES = (st.sampled_from(["F4", "F6_E2M3", "F8_E8M0", "f32", "Float32", "", "I128"])
               | st.text(max_size=6).filter(lambda s: s not in DTYPES) | _JSON.filter(
                   lambda v: not isinstance(v, str)))
_BAD_COUNTS = st.one_of(st.integers(max_value=-1), st.floats(allow_nan=False), st.booleans(),
                        st.text(max_size=3), st.none())


def _huge(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    """Consistent offsets for a tensor far larger than the file (up to 1 TiB)."""
    dims = draw(st.lists(st.integers(2**10, 2**20), min_size=2, max_size=2))
    begin = h[name]["data_offsets"][0]
    size = DTYPES[h[name]["dtype"]][1] * dims[0] * dims[1]
    h[name] = {**h[name], "shape": dims, "data_offsets": [begin, begin + size]}
    return join(h, body)


def _shape(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    """A shape whose byte size is not the span of its offsets."""
    factor = draw(st.integers(2, 2**40))
    h[name] = {**h[name], "shape": [d * factor for d in h[name]["shape"]] or [factor]}
    return join(h, body)


def _offsets(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    old = h[name]["data_offsets"]
    offsets = draw(st.lists(st.integers(-(2**64), 2**64), max_size=3).filter(lambda o: o != old))
    h[name] = {**h[name], "data_offsets": offsets}
    return join(h, body)


def _overlap(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    """The tensor moved onto another's bytes, or anywhere else in the data."""
    begin, end = h[name]["data_offsets"]
    starts = [e["data_offsets"][0] for k, e in h.items() if k not in (name, "__metadata__")]
    start = draw((st.sampled_from(starts) if starts else st.nothing())
                 | st.integers(0, len(body)).filter(lambda s: s != begin))
    h[name] = {**h[name], "data_offsets": [start, start + end - begin]}
    return join(h, body)


def _dtype(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    h[name] = {**h[name], "dtype": draw(_BAD_DTYPES)}
    return join(h, body)


def _non_object(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    value = draw(_JSON.filter(lambda v: not isinstance(v, dict)))
    return join(None, body, json.dumps(value).encode())


def _duplicate(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    twin = json.dumps({name: draw(st.just(h[name]) | _JSON)})[1:-1]
    return join(None, body, ("{" + twin + ", " + json.dumps(h)[1:]).encode())


def _prefix(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    """A length prefix that is huge, points past the end of the file, or cuts the JSON short."""
    n = int.from_bytes(raw[:8], "little")
    text = len(raw[8:8 + n].rstrip(b" "))  # the header without its padding
    prefix = draw(st.sampled_from([2**63, 2**64 - 1]) | st.integers(len(raw) - 7, 2**64 - 1)
                  | st.integers(0, text - 1))
    return prefix.to_bytes(8, "little") + raw[8:]


def _metadata(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    h["__metadata__"] = draw(_JSON.filter(
        lambda v: not (isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))))
    return join(h, body)


def _entry(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    """An entry that is no object, lacks a field, has an extra one, or a bad dimension."""
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "whole", "dim"]))
    entry = h[name]
    if field == "whole":
        h[name] = draw(_JSON.filter(lambda v: not isinstance(v, dict)))
    elif field == "extra":
        h[name] = {**entry, "extra": draw(_JSON)}
    elif field == "dim":
        h[name] = {**entry, "shape": [*entry["shape"][:-1], draw(_BAD_COUNTS)]}
    else:
        h[name] = {k: v for k, v in entry.items() if k != field}
    return join(h, body)


def _trailing(draw: st.DrawFn, h: dict[str, Any], body: bytes, name: str, raw: bytes) -> bytes:
    """Bytes after the last tensor, which belong to none."""
    return join(h, body + draw(st.binary(min_size=1, max_size=16)))


FORGERIES = {f.__name__[1:]: f for f in (_huge, _shape, _offsets, _overlap, _dtype, _non_object,
                                         _duplicate, _prefix, _metadata, _entry, _trailing)}


@st.composite
def forged(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with a header that no valid file has (each forgery breaks a rule of the format)."""
    header, body = split(raw)
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    return draw(st.sampled_from(sorted(FORGERIES)).map(FORGERIES.__getitem__))(draw, header, body, name, raw)


def _no_tensor_made(*_: Any) -> None:
    raise AssertionError("a tensor was made from a forged header")


@pytest.mark.parametrize("fmt", FORMATS)
@_settings("forge")
@given(data=st.data())
def test_forged_headers_are_refused_before_any_tensor(targets: dict[str, Target], scratch: Path,
                                                      fmt: str, data: st.DataObject) -> None:
    raw = data.draw(forged(_weights(targets[fmt])), label="forged file")
    case = write_case(targets[fmt], scratch, weights=raw)
    with mock.patch.object(checkpoint, "_materialise", _no_tensor_made):
        load_damaged(targets[fmt], case, must_fail=True)


def test_a_header_declaring_a_terabyte_tensor_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    header = {"w": {"dtype": "F32", "shape": [2**18, 2**20], "data_offsets": [0, 2**40]}}
    path.write_bytes(join(header, b"\0" * 64))
    with mock.patch.object(checkpoint, "_materialise", _no_tensor_made), \
            pytest.raises(ak.LoadError, match=r"big\.safetensors.*'w'.*run past the 64 data bytes"):
        read_safetensors(path)


# -- against the safetensors library ---------------------------------------------------------------
@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    how = draw(st.sampled_from(["cut", "flip", "forge"]))
    if how == "cut":
        return raw[:draw(st.integers(0, len(raw)))]
    if how == "flip":
        return _flip(raw, draw(st.lists(st.integers(0, 8 * len(raw) - 1), min_size=1, max_size=4)))
    return draw(forged(raw))


@_settings("differential")
@given(data=st.data())
def test_read_safetensors_accepts_only_what_the_library_reads_the_same(
        targets: dict[str, Target], scratch: Path, data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(FORMATS))
    raw = data.draw(damaged(_weights(targets[fmt])), label="file")
    path = scratch / "diff.safetensors"
    path.write_bytes(raw)
    try:
        theirs = st_load(raw)
    except Exception:  # the reference reader's refusal, whatever its type
        theirs = None
    tracemalloc.start()
    try:
        ours = read_safetensors(path)
    except ak.LoadError as exc:
        assert str(path) in str(exc)
        return
    finally:  # the header's objects and the tensors' bytes: far below a forged size
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= allowed_peak(len(raw)), f"{peak} bytes allocated reading {len(raw)}"
    assert theirs is not None, "read_safetensors accepted a file the library refuses"
    assert ours.keys() == theirs.keys()
    for key, t in ours.items():
        assert t.dtype == theirs[key].dtype and t.shape == theirs[key].shape
        assert torch.equal(t.contiguous().view(torch.uint8), theirs[key].contiguous().view(torch.uint8))


def test_bool_tensors_hold_only_zero_and_one(tmp_path: Path) -> None:
    path = tmp_path / "mask.safetensors"
    path.write_bytes(join({"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}},
                          bytes([0, 1, 2])))
    with pytest.raises(ak.LoadError, match="bool tensor 'm' holds bytes other than 0 and 1"):
        read_safetensors(path)


def test_overlapping_tensors_are_named(tmp_path: Path) -> None:
    path = tmp_path / "o.safetensors"
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    path.write_bytes(join({"a": entry, "b": {**entry, "data_offsets": [4, 12]}}, bytes(12)))
    with pytest.raises(ak.LoadError, match=r"o\.safetensors.*tensors 'a' and 'b' overlap"):
        read_safetensors(path)


def test_a_forged_header_length_allocates_nothing_of_its_size(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes((99_000_000).to_bytes(8, "little") + b"{}")
    tracemalloc.start()
    try:
        with pytest.raises(ak.LoadError, match="header length prefix says 99000000 bytes"):
            read_safetensors(path)
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused_naming_the_tensors(targets: dict[str, Target], scratch: Path,
                                                          fmt: str, value: float) -> None:
    tensors = load_file(targets[fmt].pristine / targets[fmt].weights)
    poisoned = sorted(k for k, t in tensors.items() if t.is_floating_point())[:2]
    for key in poisoned:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[-1] = value
    case = write_case(targets[fmt], scratch)
    save_file(tensors, case / targets[fmt].weights)
    with pytest.raises(ak.LoadError, match="hold NaN or infinite values") as err:
        targets[fmt].kit.load(case)
    assert all(key in str(err.value) for key in poisoned)
    assert targets[fmt].unchanged()
