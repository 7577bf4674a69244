"""Method registry. Adding a method is one new file in this package plus one ``register`` call."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..core.base import AdapterModule, MethodKind, MethodSpec, Site, Tap
from ..errors import ConfigError

_REGISTRY: dict[str, MethodSpec] = {}
_BY_CLASS: dict[type, str] = {}
_BUILTIN = ("lora", "bottleneck", "ia3", "dora", "vera", "fusion", "eigenlora", "prompt", "prefix",
            "adapterbias", "compacter", "dylora", "invertible", "hydra",
            "shira", "sparse_adapter", "union", "router", "poly", "hyper")


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ConfigError(f"method {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    _BY_CLASS[spec.config_cls] = spec.name
    return spec


def _load_builtins() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


def get_method(name: str) -> MethodSpec:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; registered: {sorted(_REGISTRY)}") from None


def spec_of(config: Any) -> MethodSpec:
    _load_builtins()
    name = _BY_CLASS.get(type(config))
    if name is None:
        raise ConfigError(
            f"{type(config).__name__} is not a registered method config; "
            f"registered: {sorted(c.__name__ for c in _BY_CLASS)}"
        )
    spec = _REGISTRY[name]
    return spec.specialize(config) if spec.specialize is not None else spec


def method_name_of(config: Any) -> str:
    return spec_of(config).name


@dataclass(frozen=True)
class MethodInfo:
    """What :func:`methods` reports for one method."""

    name: str
    config: str
    kind: str
    mergeable: bool
    sites: str
    routable: bool
    generate: bool
    paper: str


def methods() -> list[MethodInfo]:
    """Every registered method with its capabilities."""
    _load_builtins()
    return [
        MethodInfo(
            s.name, s.config_cls.__name__, s.kind.value, s.mergeable, s.sites_used,
            s.routable, s.generate, s.paper,
        )
        for s in sorted(_REGISTRY.values(), key=lambda s: s.name)
    ]


__all__ = [
    "AdapterModule", "MethodInfo", "MethodKind", "MethodSpec", "Site", "Tap",
    "get_method", "method_name_of", "methods", "register", "spec_of",
]
