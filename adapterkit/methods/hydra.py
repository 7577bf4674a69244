"""Hydra: a parallel and a sequential low-rank branch on one linear layer.

Kim et al., 2023, "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient Fine-tuning"
(arXiv:2309.06922).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_positive
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, dense_weight, features_of, is_conv1d
from ..core.typed import factory, weight_of
from ..errors import ConfigError
from . import register
from .lora import _as_targets


def _check_rank(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"Hydra.{field} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Hydra:
    """Config of a Hydra adapter on each target Linear or Conv1D ``h = W x + b``::

        h' = h + s_p * B_p A_p x + s_s * B_s A_s h

    a parallel branch (LoRA) of rank ``r`` on the layer's input and a sequential branch of rank
    ``r_sequential`` (None: ``r``) on the layer's output, with ``s = alpha / rank`` per branch.
    Merged: ``W' = W + s_p B_p A_p + s_s B_s A_s W`` and ``b' = b + s_s B_s A_s b``. The paper
    writes the merged weight without biases; its code, as here, runs the sequential branch on the
    layer's whole output, bias included. ``dropout`` acts on each branch's input. The default
    ``targets`` are the paper's: each sublayer's output projection.
    """

    r: int = 8
    alpha: float = 16
    r_sequential: int | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn.out", "ffn.out")

    def __post_init__(self) -> None:
        _check_rank("r", self.r)
        if self.r_sequential is not None:
            _check_rank("r_sequential", self.r_sequential)
        check_positive("Hydra", "alpha", self.alpha)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"Hydra.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "targets", _as_targets(self.targets))

    @property
    def rank_sequential(self) -> int:
        return self.r if self.r_sequential is None else self.r_sequential

    @property
    def scale_parallel(self) -> float:
        return self.alpha / self.r

    @property
    def scale_sequential(self) -> float:
        return self.alpha / self.rank_sequential


class HydraModule(AdapterModule):
    """Parallel ``par_A``: (r_p, in), ``par_B``: (out, r_p); sequential ``seq_A``: (r_s, out),
    ``seq_B``: (out, r_s).

    For the host input ``x``: (..., in) and output ``h``: (..., out) the delta is
    ``s_p * (x @ A_p.T) @ B_p.T + s_s * (h @ A_s.T) @ B_s.T``: (..., out). The sequential branch
    reads ``h`` as the hook gets it, so in a Stack it also transforms the deltas of weight-delta
    adapters that run before it on the host (as merging them first and then this one does).
    ``B_p`` and ``B_s`` start at zero, so the adapter starts as the identity; ``A_p`` and ``A_s``
    start Kaiming-uniform as LoRA's ``A``.
    """

    kind = MethodKind.WEIGHT_DELTA
    delta_reads_base = True

    def __init__(self, base: nn.Module, config: Hydra) -> None:
        super().__init__()
        n_in, n_out = features_of(base)
        r_p, r_s = config.r, config.rank_sequential
        kw = factory(weight_of(base))
        self.par_A = nn.Parameter(torch.empty(r_p, n_in, **kw))
        self.par_B = nn.Parameter(torch.zeros(n_out, r_p, **kw))
        self.seq_A = nn.Parameter(torch.empty(r_s, n_out, **kw))
        self.seq_B = nn.Parameter(torch.zeros(n_out, r_s, **kw))
        nn.init.kaiming_uniform_(self.par_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.seq_A, a=math.sqrt(5))
        self.scale_parallel = config.scale_parallel
        self.scale_sequential = config.scale_sequential
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        dt = self.par_A.dtype
        par = F.linear(F.linear(self.drop(x.to(dt)), self.par_A), self.par_B)  # (..., out)
        seq = F.linear(F.linear(self.drop(h.to(dt)), self.seq_A), self.seq_B)  # (..., out)
        return (par * self.scale_parallel + seq * self.scale_sequential).to(h.dtype)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        w = dense_weight(base)  # (out, in)
        seq_b = self.seq_B.to(w.dtype) * self.scale_sequential
        dw = (self.par_B @ self.par_A).to(w.dtype) * self.scale_parallel \
            + seq_b @ (self.seq_A.to(w.dtype) @ w)  # (out, r_s) @ (r_s, in)
        return dw.t() if is_conv1d(base) else dw  # Conv1D stores (in, out)

    def delta_bias(self, base: nn.Module) -> torch.Tensor | None:
        bias = getattr(base, "bias", None)
        if bias is None:
            return None
        seq_b = self.seq_B.to(bias.dtype) * self.scale_sequential
        return seq_b @ (self.seq_A.to(bias.dtype) @ bias)  # (out,)


def _find_sites(config: Hydra, finder: SiteFinder) -> list[Site]:
    return finder.linear_sites(config.targets, "Hydra")


def _build(config: Hydra, site: Site, finder: SiteFinder) -> HydraModule:
    return HydraModule(finder.module(site.host), config)


register(MethodSpec(
    name="hydra", config_cls=Hydra, kind=MethodKind.WEIGHT_DELTA, mergeable=True, routable=True,
    find_sites=_find_sites, build=_build, paper="Kim et al. 2023, arXiv:2309.06922",
    sites_used="Linear, Conv1D (targets)",
))
