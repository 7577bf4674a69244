"""What the kit keeps per adapter, and the state a saved adapter is made of."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .base import SLOT, AdapterModule, MethodSpec, Site


@dataclass
class AdapterRecord:
    """One added adapter: its config, sites and modules (by host path)."""

    name: str
    config: Any
    spec: MethodSpec
    sites: list[Site]
    modules: dict[str, AdapterModule]
    heads: tuple[str, ...] = ()
    merged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules.values():
            yield from module.parameters()


def head_state(module: nn.Module) -> dict[str, Tensor]:
    """A head's own tensors, leaving out adapter slots that other adapters put inside it."""
    return {k: t for k, t in module.state_dict(keep_vars=True).items()
            if SLOT not in k.split(".")}


def plain_state(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with parametrised tensors under their plain names, holding the
    values the forward sees (the quantised ones under QAT)."""
    out = {}
    for key, t in module.state_dict().items():
        parts = key.split(".")
        if "parametrizations" not in parts:
            out[key] = t
            continue
        i = parts.index("parametrizations")
        owner = module.get_submodule(".".join(parts[:i]))
        out[".".join([*parts[:i], parts[i + 1]])] = getattr(owner, parts[i + 1]).detach()
    return out
