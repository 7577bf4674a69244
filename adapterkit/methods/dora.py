"""DoRA: weight-decomposed low-rank adaptation.

Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (arXiv:2402.09353). The forward
pass follows PEFT's (``peft/tuners/lora/dora.py``): the norm is taken over the input dimension
for each output unit and is detached from the graph (paper section 4.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_positive
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, dense_weight, is_conv1d
from ..core.typed import weight_of
from ..errors import ConfigError
from . import register
from .lora import LoRAModule, _as_targets


@dataclass(frozen=True)
class DoRA:
    """Config of a DoRA adapter: ``W' = m * (W + s B A) / ||W + s B A||_c``.

    ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``); ``m`` starts at ``||W||_c``, so
    the adapter starts as the identity. ``targets`` takes layout roles or regular expressions.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn.q", "attn.v")
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"DoRA.r must be a positive integer, got {self.r!r}")
        check_positive("DoRA", "alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"DoRA.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "targets", _as_targets(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _row_norm(w: torch.Tensor, in_dim: int) -> torch.Tensor:
    """L2 norm over the input dimension: (out,). The same function at init and in forward, so
    that ``m / ||W||_c`` is exactly 1 at init."""
    return torch.linalg.norm(w, dim=in_dim).to(w.dtype)


class DoRAModule(LoRAModule):
    """LoRA's ``lora_A``: (r, in) and ``lora_B``: (out, r) plus a magnitude ``magnitude``: (out,).

    With ``V = W + s B A`` ((out, in) for Linear; Conv1D stores it as (in, out)) and the constant
    ``n = ||V||_c`` (out,), the host computes ``(m / n) * V x + b``; the additive delta on an
    input ``x``: (..., in) is ``(m / n - 1) * (W x) + (m / n) * s * B A x``: (..., out).
    ``W`` is the host's current weight (with merged adapters, not unmerged ones), so with other
    weight-delta adapters on the same host, DoRA must run (be activated) first for merging to
    give the unmerged outputs.
    """

    delta_reads_base = True

    def __init__(self, base: nn.Module, r: int, scale: float, dropout: float) -> None:
        super().__init__(base, r, scale, dropout, "default")
        with torch.no_grad():
            norm = _row_norm(_weight(base), self._in_dim(base))
        self.magnitude = nn.Parameter(norm.clone())

    @staticmethod
    def _in_dim(base: nn.Module) -> int:
        return 0 if is_conv1d(base) else 1  # Conv1D weight: (in, out); Linear: (out, in)

    def _magnitude_scale(self, base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """``m / ||W + s B A||_c``: (out,), with the norm detached."""
        with torch.no_grad():
            lora = LoRAModule.delta_weight(self, base)  # s B A in the weight's layout
            w = _weight(base).to(dtype)
            norm = _row_norm(w + lora.to(dtype), self._in_dim(base))
        return self.magnitude.to(dtype) / norm

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        x = self.drop(x).to(self.lora_A.dtype)
        mscale = self._magnitude_scale(base, x.dtype)
        base_out = F.linear(x, dense_weight(base).to(x.dtype))  # (..., out), no bias
        lora_out = self._low_rank(x, base, drop=False)  # (..., out)
        return ((mscale - 1) * base_out + mscale * lora_out * self.scale).to(h.dtype)

    # LoRA's apply_delta fuses its own delta; DoRA's delta differs, so it goes back to h + delta
    apply_delta = AdapterModule.apply_delta

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        w = _weight(base)
        v = w + LoRAModule.delta_weight(self, base).to(w.dtype)  # W + s B A, weight layout
        mscale = self.magnitude.to(w.dtype) / _row_norm(v, self._in_dim(base))  # (out,)
        mscale = mscale[None, :] if is_conv1d(base) else mscale[:, None]
        return mscale * v - w



def _weight(base: nn.Module) -> torch.Tensor:
    """The host's weight in its own layout, dequantized for a quantized host."""
    return weight_of(base) if is_conv1d(base) else dense_weight(base)

def _find_sites(config: DoRA, finder: SiteFinder) -> list[Site]:
    return finder.linear_sites(config.targets, "DoRA")


def _build(config: DoRA, site: Site, finder: SiteFinder) -> DoRAModule:
    return DoRAModule(finder.module(site.host), config.r, config.scale, config.dropout)


register(MethodSpec(
    name="dora", config_cls=DoRA, kind=MethodKind.WEIGHT_DELTA, mergeable=True, routable=True,
    find_sites=_find_sites, build=_build, paper="Liu et al. 2024, arXiv:2402.09353",
    sites_used="Linear, Conv1D (targets)",
))
