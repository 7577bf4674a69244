"""Checks shared by the method configs."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError


def config_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_choice(owner: str, field: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{field} must be one of {list(choices)}, got {value!r}")


def check_positive(owner: str, field: str, value: float) -> None:
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{owner}.{field} must be a positive number, got {value!r}")
