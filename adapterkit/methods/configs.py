"""Method configs as plain data: conversion to and from JSON-ready dicts with strict validation."""

from __future__ import annotations

import dataclasses
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


def config_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a config from :func:`config_to_dict` output; unknown fields raise ConfigError."""
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"a method config needs a 'method' key, got {data!r}")
    cls = get_method(str(data["method"])).config_cls
    known = config_fields(cls)
    values = {k: v for k, v in data.items() if k != "method"}
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = {k: closest(k, known, 2) for k in unknown}
        raise ConfigError(
            f"unknown field(s) for {cls.__name__}: "
            + ", ".join(f"{k!r} (did you mean {hints[k]}?)" if hints[k] else repr(k) for k in unknown)
            + f"; valid fields: {known}"
        )
    return cls(**{k: from_jsonable(v) for k, v in values.items()})
