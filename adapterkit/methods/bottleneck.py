"""Bottleneck adapters, in series or in parallel with a sublayer.

- Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP" (arXiv:1902.00751):
  series adapters after attention and FFN (``placement="both"``).
- Pfeiffer et al., 2021, "AdapterFusion" (arXiv:2005.00247): one series adapter after the FFN
  (``placement="ffn"``).
- He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning"
  (arXiv:2110.04366) and Chen et al., 2022, "AdaptFormer" (arXiv:2205.13535): parallel adapters
  (``mode="parallel"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import check_choice, check_positive
from ..core import hosts
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.kernels import bottleneck_route
from ..core.sites import SiteFinder, features_of, is_linear_like
from ..core.typed import factory
from ..errors import ConfigError
from . import register

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU,
               "tanh": nn.Tanh, "identity": nn.Identity}


@dataclass(frozen=True)
class Bottleneck:
    """Config of a bottleneck adapter ``delta = scaling * up(act(down(LN?(u))))``.

    ``u`` is the sublayer output ``h`` (series) or the sublayer input ``x`` (parallel); the
    bottleneck width is ``features // reduction``. With ``original_ln_before`` (series, post-LN
    models) ``u = LN(h + x)`` through the sublayer's own LayerNorm, as AdapterHub's Pfeiffer
    adapter reads it; the residual is still ``h``. ``targets`` (regular expressions or module
    names) replaces the layout-driven ``placement`` for models without a layout.
    """

    reduction: float = 16
    placement: str = "ffn"
    mode: str = "series"
    scaling: float = 1.0
    non_linearity: str = "relu"
    layer_norm: bool = False
    targets: tuple[str, ...] | None = None
    original_ln_before: bool = False

    def __post_init__(self) -> None:
        check_positive("Bottleneck", "reduction", self.reduction)
        check_choice("Bottleneck", "placement", self.placement, ("ffn", "attn", "both"))
        check_choice("Bottleneck", "mode", self.mode, ("series", "parallel"))
        check_choice("Bottleneck", "non_linearity", self.non_linearity, tuple(ACTIVATIONS))
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        elif self.targets is not None:
            if not self.targets:
                raise ConfigError("Bottleneck.targets must be None or a non-empty sequence")
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.original_ln_before and (self.mode != "series" or self.targets is not None):
            raise ConfigError("Bottleneck.original_ln_before needs mode='series' and a layout "
                              "placement (not targets)")


class BottleneckModule(AdapterModule):
    """``down``: (in -> m), ``up``: (m -> out), optional LayerNorm on the input.

    Input ``u``: (..., in); delta: (..., out). ``up`` starts at zero, so the adapter starts as
    the identity.
    """

    kind = MethodKind.RESIDUAL
    #: the sublayer's own LayerNorm, for ``LN(h + x)`` (a base module, set after building)
    orig_norm: nn.Module | None

    def __init__(self, n_in: int, n_out: int, width: int, config: Bottleneck,
                 like: torch.Tensor) -> None:
        super().__init__()
        kw = factory(like)
        self.norm = nn.LayerNorm(n_in, **kw) if config.layer_norm else nn.Identity()
        self.down = nn.Linear(n_in, width, **kw)
        self.act = ACTIVATIONS[config.non_linearity]()
        self.up = nn.Linear(width, n_out, **kw)
        self.scaling = config.scaling
        self.series = config.mode == "series"
        # the sublayer's own LayerNorm (a base module: kept out of this module's parameters)
        object.__setattr__(self, "orig_norm", None)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        # series: the host output; parallel: x, the tapped sublayer input (or the host input)
        u = h if self.series else x
        if self.orig_norm is not None:
            u = self.orig_norm(h + x)  # LN(h + x): x is the tapped sublayer input
        out = self.up(self.act(self.down(self.norm(u.to(self.down.weight.dtype)))))
        return (out * self.scaling).to(h.dtype)

    @classmethod
    def route_deltas(cls, modules: Sequence[AdapterModule], rows: torch.Tensor, h: torch.Tensor,
                     xs: Sequence[Any], base: nn.Module, cache: Any = None,
                     strategy: str | None = None) -> torch.Tensor:
        """Batched per-row bottleneck (see ``core.kernels.bottleneck_route``)."""
        if cls is not BottleneckModule:
            return super().route_deltas(modules, rows, h, xs, base, cache, strategy)
        return bottleneck_route(modules, rows, h, xs, base, cache, strategy)


def _find_sites(config: Bottleneck, finder: SiteFinder) -> list[Site]:
    if config.targets is None:
        sites = finder.sublayer_sites(config.placement, with_norm=config.original_ln_before)
    else:
        sites = [Site(host=p) for p in finder.paths(config.targets)]
    hosts = [s.host for s in sites]
    finder.check_types(hosts, is_linear_like, "Linear and Conv1D outputs", "Bottleneck")
    return sites


def bottleneck_shape(config: Any, site: Site, finder: SiteFinder) -> tuple[int, int, int]:
    """(in, out, width) of a bottleneck-shaped module at ``site``: a series adapter reads the
    host output, a parallel one the host's (or the tapped module's) input."""
    host = finder.module(site.host)
    n_out = features_of(host)[1]
    if config.mode == "series":
        n_in = n_out
    else:
        n_in = features_of(finder.module(site.input) if site.input else host)[0]
    return n_in, n_out, max(1, int(n_in // config.reduction))


def _build(config: Bottleneck, site: Site, finder: SiteFinder) -> BottleneckModule:
    host = finder.module(site.host)
    module = BottleneckModule(*bottleneck_shape(config, site, finder), config, hosts.like(host))
    if site.norm is not None:
        object.__setattr__(module, "orig_norm", finder.module(site.norm))
    return module


register(MethodSpec(
    name="bottleneck", config_cls=Bottleneck, kind=MethodKind.RESIDUAL, mergeable=False,
    find_sites=_find_sites, build=_build, routable=True,
    paper="Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022",
    sites_used="sublayer outputs (attn.out, ffn.out) or targets",
))
