"""The gates of a ``Mixture`` block: one trainable linear router per host over the experts there.

A router is an adapter in its own right (saved, loaded and counted like one, its modules in the
same per-host slots) that runs only inside the ``Mixture`` block naming it; the block's node
(``compose/mixture.py``) turns its logits into per-token (or per-sequence) expert weights.
Mixture-of-adapters gates after MixDA (Diao et al. 2023, arXiv:2306.05406), MeteoRA (Xu et al.
2024, arXiv:2405.13053) and LoRA-Mixer (Li et al. 2025, arXiv:2507.00029).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice
from ..core.base import SLOT, AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of, is_linear_like
from ..core.typed import factory, weight_of
from ..errors import ConfigError
from . import register
from .lora import _as_targets

ROUTER_MODES = ("token", "sequence")
#: standard deviation of the gate's initial weights (the bias starts at zero)
GATE_INIT_STD = 0.02


@dataclass(frozen=True)
class MixtureRouter:
    """Config of a Mixture's routers over ``experts`` (names of adapters already in the model):
    ``router`` ``"token"`` (one weight vector per token) or ``"sequence"`` (one per example),
    ``top_k`` experts per decision (None: a soft mixture over all). Usually made by
    ``kit.train_router(Mixture(...))`` or ``kit.add_router``."""

    experts: tuple[str, ...] = ()
    router: str = "token"
    top_k: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", _as_targets(self.experts))
        if len(set(self.experts)) != len(self.experts):
            raise ConfigError(f"MixtureRouter.experts names an adapter twice: {list(self.experts)}")
        check_choice("MixtureRouter", "router", self.router, ROUTER_MODES)
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"MixtureRouter.top_k must be None or a positive integer, got {k!r}")


class RouterModule(AdapterModule):
    """``gate``: Linear (in -> n) over the ``experts`` that have a module at this host (in the
    config's order); it reads the host's input. ``last_aux``: the balance loss of the last
    forward that asked for one (see ``kit.aux_loss``)."""

    kind = MethodKind.ROUTER

    def __init__(self, features: int, experts: tuple[str, ...], like: torch.Tensor) -> None:
        super().__init__()
        self.experts = experts
        self.gate = nn.Linear(features, len(experts), **factory(like))
        with torch.no_grad():
            nn.init.normal_(self.gate.weight, std=GATE_INIT_STD)
            nn.init.zeros_(self.gate.bias)
        self.last_aux: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) gate logits for ``x``: (..., in)."""
        return self.gate(x.to(self.gate.weight.dtype))

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        raise ConfigError("a Mixture router runs only inside the Mixture block naming it")


def _find_sites(config: MixtureRouter, finder: SiteFinder) -> list[Site]:
    """Every host where at least one expert has a module."""
    hosts, seen = [], set()
    for path, module in finder.model.named_modules():
        slot = module._modules.get(SLOT)
        if slot is None:
            continue
        present = [n for n in config.experts if n in slot._modules]
        nested = [n for n in present if getattr(slot._modules[n], "kind", None)
                  in (MethodKind.ROUTER, MethodKind.FUSION)]
        if nested:
            raise ConfigError(f"Mixture experts {nested} are routers or fusion layers; experts "
                              "are adapters (LoRA, bottleneck, ...)")
        if present:
            hosts.append(path)
            seen.update(present)
    missing = [n for n in config.experts if n not in seen]
    if missing:
        raise ConfigError(f"Mixture over {list(config.experts)}: adapters {missing} are not in "
                          "the model; add or load the experts first")
    finder.check_types(hosts, is_linear_like, "Linear and Conv1D hosts (the gate reads the "
                       "host's (..., in) input)", "Mixture")
    return [Site(host=p) for p in hosts]


def _build(config: MixtureRouter, site: Site, finder: SiteFinder) -> RouterModule:
    host = finder.module(site.host)
    slot = host._modules.get(SLOT)
    present = tuple(n for n in config.experts if slot is not None and n in slot._modules)
    return RouterModule(features_of(host)[0], present, weight_of(host))


register(MethodSpec(
    name="mixture", config_cls=MixtureRouter, kind=MethodKind.ROUTER, mergeable=False,
    routable=True, find_sites=_find_sites, build=_build,
    paper="Diao et al. 2023, arXiv:2306.05406 (MixDA); Xu et al. 2024, arXiv:2405.13053 "
          "(MeteoRA); Li et al. 2025, arXiv:2507.00029 (LoRA-Mixer)",
    sites_used="every Linear/Conv1D host of the experts (runs only inside Mixture)",
))
