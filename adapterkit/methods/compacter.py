"""Compacter: bottleneck adapters whose projections are low-rank hypercomplex (PHM) layers.

Mahabadi et al., 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers" (NeurIPS
2021; arXiv:2106.04647). Each projection is a parameterized hypercomplex multiplication layer
``W = sum_i A_i (x) B_i`` (Kronecker products) with "rules" ``A_i`` (n x n) shared by every
adapter layer and low-rank ``B_i = s_i t_i^T``. The paper's Compacter sits after attention and
after the FFN (``placement="both"``); Compacter++ keeps only the one after the FFN
(``placement="ffn"``, ``plus_plus=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..core import hosts
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of
from ..core.typed import factory
from ..errors import ConfigError
from . import register
from .bottleneck import ACTIVATIONS

#: standard deviation of the normal draw of the rules ``A_i``
RULE_INIT_STD = 0.01


@dataclass(frozen=True)
class Compacter:
    """Config of a Compacter adapter ``delta = up(act(down(h)))``, ``h`` the sublayer output.

    ``down``: (in -> m) and ``up``: (m -> out) are PHM layers with ``n = phm_dim``: the weight
    (out, in) of each is ``W = sum_{i=1..n} A_i (x) B_i`` with ``A_i``: (n, n) and
    ``B_i = s_i t_i^T``: (out/n, in/n), ``s_i``: (out/n, rank), ``t_i``: (in/n, rank), plus a
    bias (out,). The width is ``m = in // reduction``; ``in``, ``m`` and ``out`` must be
    divisible by ``n``. With ``shared_rule`` one set of rules ``A``: (n, n, n) serves both
    projections of every site (the paper's sharing "across all adapter layers"); without it each
    site holds its own set, shared by its two projections. Trainable parameters per site:
    ``2 * rank * (in + m) + m + out``, plus ``n^3`` once (``shared_rule``) or per site.

    ``plus_plus=True`` (Compacter++) changes no computation: it asks for the paper's FFN-only
    placement and raises ConfigError unless ``placement == "ffn"``; ``placement="both"`` is the
    paper's Compacter. ``targets`` (regular expressions or module names) replaces ``placement``
    for models without a layout.
    """

    reduction: float = 16
    placement: str = "ffn"
    phm_dim: int = 4
    rank: int = 1
    shared_rule: bool = True
    non_linearity: str = "gelu"
    plus_plus: bool = False
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_positive("Compacter", "reduction", self.reduction)
        check_choice("Compacter", "placement", self.placement, ("ffn", "attn", "both"))
        check_choice("Compacter", "non_linearity", self.non_linearity, tuple(ACTIVATIONS))
        for field in ("phm_dim", "rank"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"Compacter.{field} must be a positive integer, got {value!r}")
        if self.plus_plus and self.placement != "ffn":
            raise ConfigError("Compacter.plus_plus (Compacter++) is the FFN-only placement: "
                              f"it needs placement='ffn', got {self.placement!r}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        elif self.targets is not None:
            if not self.targets:
                raise ConfigError("Compacter.targets must be None or a non-empty sequence")
            object.__setattr__(self, "targets", tuple(self.targets))


def phm_weight(rule: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sum_i A_i (x) (s_i t_i^T)``: (n * p, n * q) for ``rule``: (n, n, n), ``s``: (n, p, r)
    and ``t``: (n, q, r)."""
    n, p, q = rule.shape[0], s.shape[1], t.shape[1]
    b = torch.bmm(s, t.transpose(1, 2))  # (n, p, q)
    # kron(A_i, B_i)[a*p + c, b*q + d] = A_i[a, b] * B_i[c, d]
    return torch.einsum("iab,icd->acbd", rule, b).reshape(n * p, n * q)


def _glorot(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    bound = math.sqrt(6.0 / (shape[-2] + shape[-1]))
    return torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(-bound, bound)


class CompacterModule(AdapterModule):
    """Factors ``down_s``: (n, m/n, r), ``down_t``: (n, in/n, r), ``down_bias``: (m,),
    ``up_s``: (n, out/n, r), ``up_t``: (n, m/n, r), ``up_bias``: (out,), and the rules
    ``phm_rule``: (n, n, n).

    The rules are a parameter of this module only if it owns them (``rule_owner is None``): with
    ``shared_rule`` the adapter's first site owns them and every other site keeps a plain
    reference to that module (not a submodule), so the rules are one parameter, yielded, counted
    and saved once, under the first site. For ``h``: (..., in) the delta is (..., out). ``up_s``
    and ``up_bias`` start at zero, so ``up`` is exactly zero and the adapter starts as the
    identity; ``t`` factors start Glorot-uniform and the rules N(0, 0.01^2).
    """

    kind = MethodKind.RESIDUAL
    #: the module holding the shared rule matrices, or None when this one holds them
    rule_owner: CompacterModule | None

    def __init__(self, n_in: int, n_out: int, width: int, config: Compacter,
                 like: torch.Tensor, rule_owner: CompacterModule | None) -> None:
        super().__init__()
        n, r = config.phm_dim, config.rank
        kw = factory(like)
        if rule_owner is None:
            self.phm_rule = nn.Parameter(torch.randn(n, n, n, **kw) * RULE_INIT_STD)
        # a reference, not a submodule: the owner's parameters stay the owner's
        object.__setattr__(self, "rule_owner", rule_owner)
        self.down_s = nn.Parameter(_glorot((n, width // n, r), like))
        self.down_t = nn.Parameter(_glorot((n, n_in // n, r), like))
        self.down_bias = nn.Parameter(torch.zeros(width, **kw))
        self.up_s = nn.Parameter(torch.zeros(n, n_out // n, r, **kw))
        self.up_t = nn.Parameter(_glorot((n, width // n, r), like))
        self.up_bias = nn.Parameter(torch.zeros(n_out, **kw))
        self.act = ACTIVATIONS[config.non_linearity]()

    @property
    def rule(self) -> torch.Tensor:
        owner = self.rule_owner
        return owner.phm_rule if owner is not None else self.phm_rule

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        rule = self.rule
        u = h.to(self.down_s.dtype)
        mid = F.linear(u, phm_weight(rule, self.down_s, self.down_t), self.down_bias)
        out = F.linear(self.act(mid), phm_weight(rule, self.up_s, self.up_t), self.up_bias)
        return out.to(h.dtype)


def _find_sites(config: Compacter, finder: SiteFinder) -> list[Site]:
    return finder.output_sites(config.placement, config.targets, "Compacter")


def _build(config: Compacter, site: Site, finder: SiteFinder) -> CompacterModule:
    host = finder.module(site.host)
    n_out = features_of(host)[1]
    n_in = n_out  # series: the adapter reads the host output
    width = max(1, int(n_in // config.reduction))
    n = config.phm_dim
    bad = {k: v for k, v in (("in", n_in), ("width", width), ("out", n_out)) if v % n}
    if bad:
        sizes = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise ConfigError(f"Compacter at {site.host!r}: {sizes} not divisible by phm_dim={n} "
                          f"(width = in // reduction = {n_in} // {config.reduction})")
    owner = None
    if config.shared_rule:
        key = ("compacter.rule_owner", config)
        owner = cast("CompacterModule | None", finder.memo.get(key))
    module = CompacterModule(n_in, n_out, width, config, hosts.like(host), owner)
    if config.shared_rule and owner is None:
        finder.memo[key] = module
    return module


register(MethodSpec(
    name="compacter", config_cls=Compacter, kind=MethodKind.RESIDUAL, mergeable=False, routable=True,
    find_sites=_find_sites, build=_build, paper="Mahabadi et al. 2021, arXiv:2106.04647",
    sites_used="sublayer outputs (attn.out, ffn.out) or targets",
))
