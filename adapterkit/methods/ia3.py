"""(IA)^3: learned rescaling vectors on activations.

Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (arXiv:2205.05638).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import hosts
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.kernels import ia3_route
from ..core.sites import SiteFinder, dense_weight, features_of, is_conv1d, is_linear_like
from ..errors import TargetError
from . import register
from .lora import _as_targets


@dataclass(frozen=True)
class IA3:
    """Config of an (IA)^3 adapter: one learned vector ``l`` per target.

    Targets listed in ``feedforward`` (which must be among ``targets``) scale their *input*,
    ``y = W (x * l) + b``; the other targets scale their *output*, ``h' = h * l``. Both take layout
    roles or regular expressions over paths. ``init_ones=False`` starts ``l`` from N(0, 1) as PEFT
    does with ``init_ia3_weights=False`` (then the adapter is not the identity at init).
    """

    targets: tuple[str, ...] = ("attn.k", "attn.v", "ffn.out")
    feedforward: tuple[str, ...] = ("ffn.out",)
    init_ones: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _as_targets(self.targets))
        ff = self.feedforward
        object.__setattr__(self, "feedforward", () if ff in ((), []) else _as_targets(ff))


class IA3Module(AdapterModule):
    """One learned vector ``l = 1 + ia3_offset`` on a Linear or Conv1D with weight ``W``: (out, in).

    The parameter is the offset ``l - 1`` (zero at the identity, like every other adapter's
    parameters; PEFT's ``ia3_l`` is ``1 + ia3_offset``). Output scaling: ``ia3_offset``: (out,),
    ``h' = h * l = diag(l) W x + l * b``, so the additive delta is ``h * (l - 1)``; merged:
    ``W' = diag(l) W`` and ``b' = l * b``. Input scaling (feedforward): ``ia3_offset``: (in,),
    ``y = W (x * l) + b``, delta ``W ((l - 1) * x)`` (no bias); merged: ``W' = W diag(l)``.
    ``x``: (..., in), ``h``: (..., out). Output scaling also scales the deltas of weight-delta
    adapters that run before it on the host; input scaling reads only the host's weight, so it
    must run first among them for merging to give the unmerged outputs.
    """

    kind = MethodKind.WEIGHT_DELTA
    delta_reads_base = True

    def __init__(self, base: nn.Module, feedforward: bool, init_ones: bool) -> None:
        super().__init__()
        n_in, n_out = features_of(base)
        w = hosts.like(base)
        n = n_in if feedforward else n_out
        offset = torch.zeros(n) if init_ones else torch.randn(n) - 1  # l = 1 or l ~ N(0, 1)
        self.ia3_offset = nn.Parameter(offset.to(w.device, w.dtype))
        self.feedforward = feedforward

    @property
    def scaling(self) -> torch.Tensor:
        """The scaling vector ``l = 1 + ia3_offset`` (PEFT's ``ia3_l``, flattened)."""
        return 1 + self.ia3_offset

    def _scaled_input(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """``W ((l - 1) * x)``: (..., out), without the bias."""
        dl = self.ia3_offset
        return F.linear(x.to(dl.dtype) * dl, dense_weight(base).to(dl.dtype))

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        if self.feedforward:
            return self._scaled_input(x, base).to(h.dtype)
        return (h * self.ia3_offset).to(h.dtype)

    def apply_delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        if self.feedforward:
            return h + self._scaled_input(x, base).to(h.dtype)
        return (h * self.scaling).to(h.dtype)

    @classmethod
    def route_deltas(cls, modules: Sequence[AdapterModule], rows: torch.Tensor, h: torch.Tensor,
                     xs: Sequence[Any], base: nn.Module, cache: Any = None,
                     strategy: str | None = None) -> torch.Tensor:
        """Batched per-row (IA)^3 with stacked offsets (see ``core.kernels.ia3_route``);
        subclasses that change the delta fall back to the generic loop."""
        if cls is not IA3Module:
            return super().route_deltas(modules, rows, h, xs, base, cache, strategy)
        return ia3_route(modules, rows, h, xs, base, cache, strategy)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        w = dense_weight(base)  # (out, in)
        dl = self.ia3_offset.to(w.dtype)
        dw = w * dl[None, :] if self.feedforward else w * dl[:, None]  # (out, in)
        return dw.t() if is_conv1d(base) else dw

    def delta_bias(self, base: nn.Module) -> torch.Tensor | None:
        bias = getattr(base, "bias", None)
        if self.feedforward or bias is None:
            return None
        return bias * self.ia3_offset.to(bias.dtype)


def _feedforward_paths(config: IA3, finder: SiteFinder) -> set[str]:
    def build() -> set[str]:
        return set(finder.paths(config.feedforward)) if config.feedforward else set()
    return finder.memoized(("ia3.feedforward", config.feedforward), build)


def _find_sites(config: IA3, finder: SiteFinder) -> list[Site]:
    paths = finder.paths(config.targets)
    finder.check_types(paths, is_linear_like, "Linear and Conv1D", "IA3")
    extra = sorted(_feedforward_paths(config, finder) - set(paths))
    if extra:
        raise TargetError(
            f"IA3.feedforward must name a subset of IA3.targets; these feedforward modules are "
            f"not targets: {extra} (targets={list(config.targets)})"
        )
    return [Site(host=p) for p in paths]


def _build(config: IA3, site: Site, finder: SiteFinder) -> IA3Module:
    feedforward = site.host in _feedforward_paths(config, finder)
    return IA3Module(finder.module(site.host), feedforward, config.init_ones)


register(MethodSpec(
    name="ia3", config_cls=IA3, kind=MethodKind.WEIGHT_DELTA, mergeable=True, routable=True,
    find_sites=_find_sites, build=_build, paper="Liu et al. 2022, arXiv:2205.05638",
    sites_used="Linear, Conv1D (targets; feedforward ones scale their input)",
))
