"""AdapterFusion layers: attention over the outputs of several adapters at each site.

Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning"
(arXiv:2005.00247). A fusion layer is an adapter in its own right (saved, loaded and counted like
one, its modules in the same per-host slots) but runs only inside a ``Fuse`` composition block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_positive
from ..core.base import SLOT, AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of, is_linear_like
from ..core.typed import factory, weight_of
from ..errors import ConfigError
from . import register
from .lora import _as_targets


@dataclass(frozen=True)
class Fusion:
    """Config of a fusion layer over ``adapters`` (names of adapters already in the model), with
    softmax temperature ``temperature``. Usually made by ``kit.add_fusion(Fuse(...))``."""

    adapters: tuple[str, ...] = ()
    temperature: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapters", _as_targets(self.adapters))
        check_positive("Fusion", "temperature", self.temperature)


class FusionModule(AdapterModule):
    """``query``, ``key``, ``value``: Linear (d -> d); query and key start N(0, 0.02) with zero
    bias, value starts as the identity (as in the paper), so fusing one adapter gives it back.

    Given the host output ``h``: (..., d) and the adapters' outputs ``o_i = h + delta_i``:
    (..., d), i = 1..n: ``a = softmax_i(Q(h) . K(o_i) / T)``: (..., n) and the output is
    ``sum_i a_i V(o_i)``: (..., d).
    """

    kind = MethodKind.FUSION

    def __init__(self, features: int, temperature: float, like: torch.Tensor) -> None:
        super().__init__()
        kw = factory(like)
        self.query = nn.Linear(features, features, **kw)
        self.key = nn.Linear(features, features, **kw)
        self.value = nn.Linear(features, features, **kw)
        self.temperature = temperature
        with torch.no_grad():
            for lin in (self.query, self.key):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            self.value.weight.copy_(torch.eye(features, **kw))
            nn.init.zeros_(self.value.bias)

    def fuse(self, h: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The fused output (..., d) from ``h`` and the n outputs ``o_i``: (..., d)."""
        dtype = self.query.weight.dtype
        o = torch.stack([t.to(dtype) for t in outputs], dim=-2)  # (..., n, d)
        q = self.query(h.to(dtype)).unsqueeze(-1)  # (..., d, 1)
        scores = (self.key(o) @ q).squeeze(-1) / self.temperature  # (..., n)
        a = torch.softmax(scores, dim=-1)
        return (a.unsqueeze(-2) @ self.value(o)).squeeze(-2).to(h.dtype)  # (..., d)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        raise ConfigError("a fusion layer runs only inside a Fuse composition block")


def _find_sites(config: Fusion, finder: SiteFinder) -> list[Site]:
    """Every host where at least one of the fused adapters has a module."""
    hosts, seen = [], set()
    for path, module in finder.model.named_modules():
        slot = module._modules.get(SLOT)
        if slot is None:
            continue
        present = [n for n in config.adapters if n in slot._modules]
        nested = [n for n in present if isinstance(slot._modules[n], FusionModule)]
        if nested:
            raise ConfigError(f"cannot fuse fusion layers {nested}: a Fuse of a Fuse is not allowed")
        if present:
            hosts.append(path)
            seen.update(present)
    missing = [n for n in config.adapters if n not in seen]
    if missing:
        raise ConfigError(f"fusion over {list(config.adapters)}: adapters {missing} are not in the "
                          "model; add or load the fused adapters first")
    finder.check_types(hosts, lambda m: is_linear_like(m) or isinstance(m, nn.Embedding),
                       "hosts with (..., features) outputs: Linear, Conv1D, Embedding", "Fusion")
    return [Site(host=p) for p in hosts]


def _build(config: Fusion, site: Site, finder: SiteFinder) -> FusionModule:
    host = finder.module(site.host)
    return FusionModule(features_of(host)[1], config.temperature, weight_of(host))


register(MethodSpec(
    name="fusion", config_cls=Fusion, kind=MethodKind.FUSION, mergeable=False, routable=True,
    find_sites=_find_sites, build=_build, paper="Pfeiffer et al. 2021, arXiv:2005.00247",
    sites_used="every host of the fused adapters (runs only inside Fuse)",
))
