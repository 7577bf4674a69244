"""Method configs as plain data: conversion to and from JSON-ready dicts with strict validation."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from typing import Any

from ..config import config_fields
from ..errors import ConfigError, closest
from . import get_method, method_name_of


def to_jsonable(value: Any) -> Any:
    """Tuples become lists and nested configs become tagged dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"method": method_name_of(value), **fields_to_dict(value)}
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def fields_to_dict(config: Any) -> dict[str, Any]:
    return {f.name: to_jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable`: lists become tuples, tagged dicts become configs."""
    if isinstance(value, dict):
        if "method" in value:
            return config_from_dict(value)
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(from_jsonable(v) for v in value)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """``{"method": name, **fields}``, ready for ``json.dumps``."""
    return to_jsonable(config)


def _fits(value: Any, hint: Any) -> bool:
    """Whether the JSON value ``value`` can stand for a field annotated ``hint``; a type this
    check does not know (``Any``: nested configs) is left to the config's own validation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int or hint is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return hint is int or abs(value) <= sys.float_info.max
        return hint is float and isinstance(value, float) and math.isfinite(value)
    if origin is tuple:
        if args == (str, Ellipsis) and isinstance(value, str):
            return True  # one name: every such field takes it as a tuple of one
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    return True


def _describe(hint: Any) -> str:
    plain = isinstance(hint, type) and not typing.get_args(hint)
    return hint.__name__ if plain else str(hint).replace("typing.", "")


def _wrong_types(cls: type, values: dict[str, Any]) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f"{cls.__name__}.{k} must be {_describe(hints[k])}, got {v!r:.80}"
            for k, v in values.items() if not _fits(v, hints[k])]


def config_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a config from :func:`config_to_dict` output. Every problem (a missing or unknown
    method, unknown fields, a value of the wrong JSON type or one the config refuses, nesting too
    deep) raises ConfigError naming it."""
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"a method config needs a 'method' key, got {data!r:.200}")
    cls = get_method(str(data["method"])).config_cls
    known = config_fields(cls)
    values = {k: v for k, v in data.items() if k != "method"}
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = {k: closest(str(k), known, 2) for k in unknown}
        raise ConfigError(
            f"unknown field(s) for {cls.__name__}: "
            + ", ".join(f"{k!r} (did you mean {hints[k]}?)" if hints[k] else repr(k) for k in unknown)
            + f"; valid fields: {known}"
        )
    wrong = _wrong_types(cls, values)
    if wrong:
        raise ConfigError("; ".join(wrong))
    try:
        return cls(**{k: from_jsonable(v) for k, v in values.items()})
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{cls.__name__}: the config is nested too deeply") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        raise ConfigError(f"{cls.__name__} refuses these values ({type(exc).__name__}: {exc})") from None
