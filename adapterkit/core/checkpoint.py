"""The native checkpoint: ``adapter_config.json`` plus ``adapter.safetensors``.

The JSON records ``format``/``format_version``, the adapterkit version, the adapter name, the
method config, the base identity and the trained heads. Pickle is never read or written.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import LoadError

FORMAT = "adapterkit"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_checkpoint(directory: str | os.PathLike, meta: dict[str, Any],
                     tensors: dict[str, torch.Tensor]) -> Path:
    """Write both files; each appears whole or not at all."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    _atomic_write(out / WEIGHTS_FILE,
                  lambda p: save_file(flat, p, metadata={"format": FORMAT,
                                                         "format_version": str(FORMAT_VERSION)}))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(text))
    return out


def _listing(directory: Path) -> str:
    if not directory.is_dir():
        return f"{directory} is not a directory"
    names = sorted(p.name for p in directory.iterdir())
    return f"{directory} holds {names}"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; anything else (a missing or unreadable file, text that is not
    strict JSON, a duplicate key, NaN or Infinity, nesting too deep to parse) raises LoadError."""
    if not path.is_file():
        raise LoadError(f"missing {path.name}: {_listing(path.parent)}")
    try:
        data = strict_json(path.read_bytes())
    except OSError as exc:
        raise LoadError(f"{path} cannot be read: {exc}") from None
    except ValueError as exc:
        raise LoadError(f"{path} is not valid JSON ({exc}); the file is corrupt or truncated") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(raw: bytes) -> Any:
    """``raw`` parsed as UTF-8 JSON; every problem (bad UTF-8 or syntax, a duplicate key, NaN or
    Infinity, an integer too long to convert, nesting too deep) raises ValueError."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                          parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# -- safetensors ---------------------------------------------------------------------------------
#: safetensors dtype name -> (torch dtype, bytes per element); the whole-byte types only
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1), "U16": (torch.uint16, 2), "U32": (torch.uint32, 4),
    "U64": (torch.uint64, 8), "C64": (torch.complex64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}
#: the largest JSON header read (the limit of the safetensors library itself)
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header, checked against the file: ``begin``/``end`` are
    byte offsets into the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _entry(name: str, info: Any, data_len: int) -> TensorEntry:
    """The checked header entry of tensor ``name``; a problem raises ValueError naming it."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r}: an entry is an object with exactly 'dtype', 'shape' "
                         f"and 'data_offsets', found {info!r:.200}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r:.50}; known: {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise ValueError(f"tensor {name!r}: shape {shape!r:.200} is not a list of integers >= 0")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r:.200} are not [begin, end] "
                         "with 0 <= begin <= end")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if end - begin != nbytes:
        raise ValueError(f"tensor {name!r}: {dtype} {shape} takes {nbytes} bytes, its "
                         f"data_offsets [{begin}, {end}] span {end - begin}")
    if end > data_len:
        raise ValueError(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the "
                         f"{data_len} data bytes of the file")
    return TensorEntry(name, DTYPES[dtype][0], tuple(shape), begin, end)


def _entries(header: Any, data_len: int) -> list[TensorEntry]:
    """The tensors of a parsed header, which must tile the data section exactly."""
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ must map names to strings")
    entries = sorted((_entry(k, v, data_len) for k, v in header.items() if k != "__metadata__"),
                     key=lambda e: (e.begin, e.end))
    at, last = 0, None
    for e in entries:
        if e.begin < at:
            raise ValueError(f"tensors {last!r} and {e.name!r} overlap (bytes {e.begin} to {at})")
        if e.begin > at:
            raise ValueError(f"bytes {at} to {e.begin} before tensor {e.name!r} belong to no tensor")
        at, last = e.end, e.name
    if at != data_len:
        raise ValueError(f"the tensors end at byte {at} of the data, which has {data_len} bytes")
    return entries


def read_header(f: io.BufferedReader, size: int) -> tuple[int, list[TensorEntry]]:
    """(start of the data section, checked tensor entries) of the open safetensors file ``f``
    of ``size`` bytes; reads only the length prefix and the header. Problems raise ValueError."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ValueError(f"it holds {size} bytes, fewer than the 8-byte header length")
    n = int.from_bytes(prefix, "little")
    if n > size - 8:
        raise ValueError(f"its header length prefix says {n} bytes, but only {size - 8} bytes "
                         "follow it")
    if n > MAX_HEADER:
        raise ValueError(f"its header length {n} exceeds the limit of {MAX_HEADER} bytes")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"it ends inside the {n}-byte header")
    try:
        header = strict_json(raw)
    except ValueError as exc:
        raise ValueError(f"its header is not valid JSON ({exc})") from None
    return 8 + n, _entries(header, size - 8 - n)


def _materialise(f: io.BufferedReader, start: int, e: TensorEntry) -> torch.Tensor:
    """The tensor of a checked entry: one buffer of its own byte size, read from the file."""
    buf = bytearray(e.end - e.begin)
    f.seek(start + e.begin)
    if f.readinto(buf) != len(buf):
        raise ValueError(f"the file ended inside tensor {e.name!r} (was it changed while read?)")
    if not buf:
        return torch.empty(e.shape, dtype=e.dtype)
    if e.dtype is torch.bool and int(torch.frombuffer(buf, dtype=torch.uint8).max()) > 1:
        raise ValueError(f"bool tensor {e.name!r} holds bytes other than 0 and 1")
    return torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path`` (little-endian hosts). The whole header is
    checked first (length prefix, JSON, dtypes, shapes against ``data_offsets``, offsets against
    each other and the file's length), so no tensor is made for a malformed file and nothing
    larger than the file is allocated; every problem raises LoadError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"missing {path.name}: {_listing(path.parent)}")
    size: int | str = "?"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start, entries = read_header(f, size)
            return {e.name: _materialise(f, start, e) for e in entries}
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path} ({size} bytes) is not a readable safetensors file: {exc}; "
                        "it is corrupt or truncated") from None


def refuse_non_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise LoadError naming the tensors of ``path`` that hold NaN or infinite values."""
    bad = [k for k, t in tensors.items() if (t.is_floating_point() or t.is_complex())
           and not bool(torch.isfinite(t.float() if t.element_size() == 1 else t).all())]
    if bad:
        shown = ", ".join(sorted(bad)[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise LoadError(f"{path}: tensor(s) {shown} hold NaN or infinite values; an adapter "
                        "with them would give non-finite outputs, so it is not loaded")


# -- typed fields of JSON configs ---------------------------------------------------------------
def _is_number(v: Any) -> bool:
    """An int or float that converts to a finite float."""
    if _is_int(v):
        return bool(abs(v) <= sys.float_info.max)
    return isinstance(v, float) and math.isfinite(v)


#: what a field of a JSON config may hold: (its description, its test)
Kind = tuple[str, Callable[[Any], bool]]
STR: Kind = ("a string", lambda v: isinstance(v, str))
INT: Kind = ("an integer", _is_int)
NUMBER: Kind = ("a finite number", _is_number)
BOOL: Kind = ("true or false", lambda v: isinstance(v, bool))
NULL: Kind = ("null", lambda v: v is None)
STRS: Kind = ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
INTS: Kind = ("a list of integers", lambda v: isinstance(v, list) and all(_is_int(x) for x in v))
OBJECT: Kind = ("an object", lambda v: isinstance(v, dict))


def check_kinds(data: dict[str, Any], kinds: dict[str, tuple[Kind, ...]], path: Path) -> None:
    """Raise LoadError naming every field of ``data`` (read from ``path``) whose value is of none
    of its kinds, with the kinds allowed; absent fields pass."""
    bad = [f"{k}={data[k]!r:.80} (allowed: {' or '.join(d for d, _ in allowed)})"
           for k, allowed in kinds.items() if k in data and not any(ok(data[k]) for _, ok in allowed)]
    if bad:
        raise LoadError(f"{path}: wrong type for " + "; ".join(bad))


def detect_format(directory: str | os.PathLike) -> str:
    """``"adapterkit"``, ``"peft"`` or ``"adapterhub"``, from the files in ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        raise LoadError(f"no adapter directory at {d}")
    cfg = d / CONFIG_FILE
    if not cfg.is_file():
        raise LoadError(f"missing {CONFIG_FILE}: {_listing(d)}")
    meta = read_json(cfg)
    if meta.get("format") == FORMAT:
        return FORMAT
    if "peft_type" in meta:
        return "peft"
    if "config" in meta and ("model_class" in meta or "hidden_size" in meta):
        return "adapterhub"
    raise LoadError(f"{cfg} is neither an adapterkit, PEFT nor AdapterHub adapter config")


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON metadata and the tensors of a native checkpoint, validated for form."""
    d = Path(directory)
    meta = read_json(d / CONFIG_FILE)
    if meta.get("format") != FORMAT:
        raise LoadError(f"{d / CONFIG_FILE} is not an adapterkit checkpoint (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise LoadError(f"{d / CONFIG_FILE} has format_version {version!r:.40}; this adapterkit "
                        f"reads 1 to {FORMAT_VERSION}")
    for key in ("name", "config"):
        if key not in meta:
            raise LoadError(f"{d / CONFIG_FILE} lacks the {key!r} entry")
    check_kinds(meta, NATIVE_KINDS, d / CONFIG_FILE)
    if isinstance(meta.get("base"), dict):
        check_kinds(meta["base"], BASE_KINDS, d / CONFIG_FILE)
    return meta, read_safetensors(d / WEIGHTS_FILE)


#: the kinds of the native config's top-level fields that loading reads
NATIVE_KINDS: dict[str, tuple[Kind, ...]] = {
    "name": (STR,), "config": (OBJECT,), "heads": (STRS,), "base": (OBJECT, NULL),
    "quantization": (OBJECT,),
}
#: the kinds of the fields of its ``base`` entry, which the base-model check reads
BASE_KINDS: dict[str, tuple[Kind, ...]] = {
    "model_type": (STR, NULL), "layout": (STR, NULL), "fingerprint": (STR, NULL),
    "sites": (("a list of [host, input] pairs", lambda v: isinstance(v, list) and all(
        isinstance(s, list) and len(s) == 2 and isinstance(s[0], str)
        and (s[1] is None or isinstance(s[1], str)) for s in v)),),
    "shapes": (("an object of integer lists", lambda v: isinstance(v, dict) and all(
        INTS[1](s) for s in v.values())),),
}
