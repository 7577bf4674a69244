"""LoRA: low-rank adaptation of weight matrices.

Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685).
rsLoRA scaling: Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with
LoRA" (arXiv:2312.03732). ``init="pissa"``: Meng et al., 2024, "PiSSA: Principal Singular Values and
Singular Vectors Adaptation of Large Language Models" (arXiv:2404.02948), in :mod:`.pissa`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..core import hosts
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.kernels import lora_route
from ..core.sites import SiteFinder, features_of, is_conv1d
from ..errors import ConfigError
from . import register


def _as_targets(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise ConfigError(f"targets must be a non-empty sequence of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _as_rank_pattern(value: object) -> tuple[tuple[str, int], ...]:
    """``{pattern: rank}`` or ``((pattern, rank), ...)`` as a tuple of pairs, validated."""
    # anything that is not an iterable of pairs fails the unpacking below with a TypeError
    items = cast("Iterable[tuple[Any, Any]]", value.items() if isinstance(value, Mapping) else value)
    try:
        pairs = tuple((str(p), r) for p, r in items)
    except (TypeError, ValueError):
        raise ConfigError(f"LoRA.rank_pattern must map patterns to ranks, got {value!r}") from None
    for pattern, rank in pairs:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ConfigError(f"LoRA.rank_pattern[{pattern!r}] must be a positive integer, got {rank!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"LoRA.rank_pattern key {pattern!r} is not a valid pattern: {exc}") from None
    return pairs


@dataclass(frozen=True)
class LoRA:
    """Config of a LoRA adapter: ``W' = W + s * B @ A``, ``s = alpha / r`` (``alpha / sqrt(r)``
    with ``use_rslora``). ``targets`` takes layout roles or regular expressions over paths.

    ``rank_pattern`` gives some sites another rank (as PEFT's ``rank_pattern``): pairs
    ``(pattern, rank)``, the first whose pattern equals the site path, ends it after a ``.``, or
    fully matches it as a regular expression wins; such a site's scale is ``alpha / rank``.

    ``init``: ``"default"`` (A Kaiming-uniform, B zero), ``"gaussian"`` (A normal with std
    ``1/r``), ``"zeros"``, or PiSSA: ``"pissa"`` (A and B from the top-r SVD of the host's
    weight, which is replaced by the residual while the adapter is attached; Linear and Conv1D
    hosts only) and ``"pissa_niter_<k>"`` (the same from a randomised SVD with ``k`` subspace
    iterations). See :mod:`adapterkit.methods.pissa`.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn.q", "attn.v")
    use_rslora: bool = False
    init: str = "default"
    rank_pattern: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA.r must be a positive integer, got {self.r!r}")
        check_positive("LoRA", "alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA.dropout must be in [0, 1), got {self.dropout!r}")
        if not is_pissa(self.init):
            check_choice("LoRA", "init", self.init,
                         ("default", "gaussian", "zeros", "pissa", "pissa_niter_<k>"))
        object.__setattr__(self, "targets", _as_targets(self.targets))
        object.__setattr__(self, "rank_pattern", _as_rank_pattern(self.rank_pattern))

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def rank_for(self, path: str) -> int:
        """The rank of the site at module path ``path`` (``rank_pattern``, else ``r``)."""
        for pattern, rank in self.rank_pattern:
            if path == pattern or path.endswith("." + pattern) or re.fullmatch(pattern, path):
                return rank
        return self.r

    def scale_for(self, path: str) -> float:
        r = self.rank_for(path)
        return self.alpha / (math.sqrt(r) if self.use_rslora else r)


class LoRAModule(AdapterModule):
    """Low-rank delta on one Linear, Conv1D, Conv2d or Embedding.

    ``lora_A``: (r, in) — (r, in, kh, kw) for Conv2d; ``lora_B``: (out, r).
    For an input ``x`` of shape (..., in) the delta is ``s * (x @ A.T) @ B.T``: (..., out).
    """

    kind = MethodKind.WEIGHT_DELTA

    def __init__(self, base: nn.Module, r: int, scale: float, dropout: float, init: str) -> None:
        super().__init__()
        n_in, n_out = features_of(base)
        w = hosts.like(base)
        shape_a = (r, n_in, *base.kernel_size) if isinstance(base, nn.Conv2d) else (r, n_in)
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise ConfigError("LoRA on Conv2d supports groups=1 only")
        self.lora_A = nn.Parameter(torch.zeros(shape_a, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r, device=w.device, dtype=w.dtype))
        self.scale = scale
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset(init, embedding=isinstance(base, nn.Embedding))

    def reset(self, init: str, embedding: bool = False) -> None:
        with torch.no_grad():
            if init == "zeros":
                return
            if embedding:  # A zero, B random: the delta starts at zero
                nn.init.normal_(self.lora_B)
            elif init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.lora_A.shape[0])
            else:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def _low_rank(self, x: torch.Tensor, base: nn.Module, drop: bool = True,
                  factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``B @ A`` applied to ``x`` (after dropout unless ``drop=False``), unscaled;
        ``factors``: another ``(A, B)`` pair in the layout of ``lora_A``, ``lora_B``."""
        a, b = factors if factors is not None else (self.lora_A, self.lora_B)
        if isinstance(base, nn.Embedding):
            t = F.embedding(x, a.t(), base.padding_idx, base.max_norm, base.norm_type,
                            base.scale_grad_by_freq, base.sparse)
            return F.linear(t, b)
        x = self._input(x, a, drop)
        if isinstance(base, nn.Conv2d):
            t = F.conv2d(x, a, None, base.stride, base.padding, base.dilation)
            return F.conv2d(t, b[:, :, None, None])  # (N, r, H, W) -> (N, out, H, W)
        return F.linear(F.linear(x, a), b)

    def _input(self, x: torch.Tensor, a: torch.Tensor, drop: bool = True) -> torch.Tensor:
        x = self.drop(x) if drop else x
        if not torch.is_autocast_enabled(x.device.type):  # autocast's kernels cast x itself:
            x = x.to(a.dtype)  # a cast to fp32 here would be undone by a cast to bf16
        return x

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return (self._low_rank(x, base) * self.scale).to(h.dtype)

    def apply_delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """``h + s * (x @ A.T) @ B.T``. For a linear host whose output has the dtype the product
        is computed in (the autocast dtype, or the adapter's), one ``addmm``: no separate
        (..., out) product and no pass to scale it, and the backward scales the (..., r)
        gradients rather than the (..., out) one."""
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.lora_B.dtype
        if isinstance(base, (nn.Embedding, nn.Conv2d)) or h.dtype != dtype:
            return torch.add(h, self._low_rank(x, base).to(h.dtype), alpha=self.scale)
        t = F.linear(self._input(x, self.lora_A), self.lora_A)  # (..., r)
        # (N, out) + s * (N, r) @ (r, out), N the flattened leading dimensions
        out = torch.addmm(h.reshape(-1, h.shape[-1]), t.reshape(-1, t.shape[-1]), self.lora_B.t(),
                          alpha=self.scale)
        return out.view(h.shape)

    @classmethod
    def route_deltas(cls, modules: Sequence[AdapterModule], rows: torch.Tensor, h: torch.Tensor,
                     xs: Sequence[Any], base: nn.Module, cache: Any = None,
                     strategy: str | None = None) -> torch.Tensor:
        """Batched per-row LoRA: dense slots or gathered weights (see
        ``core.kernels.lora_route``); subclasses that change the delta (DoRA) fall back to
        the generic loop."""
        if cls is not LoRAModule:
            return super().route_deltas(modules, rows, h, xs, base, cache, strategy)
        return lora_route(modules, rows, h, xs, base, cache, strategy)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        return low_rank_weight(self.lora_A, self.lora_B, self.scale, base)


def low_rank_weight(a: torch.Tensor, b: torch.Tensor, scale: float, base: nn.Module) -> torch.Tensor:
    """``scale * B @ A`` in the layout of ``base.weight`` (``a``, ``b`` as ``lora_A``, ``lora_B``)."""
    if isinstance(base, nn.Conv2d):
        # (out, r) @ (r, in*kh*kw) -> (out, in, kh, kw)
        return (b @ a.flatten(1)).view(base.weight.shape) * scale
    dw = (b @ a) * scale  # (out, in)
    if is_conv1d(base) or isinstance(base, nn.Embedding):
        return dw.t()  # stored as (in, out) / (num_embeddings, dim)
    return dw


def lora_supports(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)) or is_conv1d(module)


def is_pissa(init: object) -> bool:
    """``"pissa"`` or ``"pissa_niter_<k>"`` (k a non-negative integer)."""
    return isinstance(init, str) and re.fullmatch(r"pissa(_niter_\d+)?", init) is not None


def _find_sites(config: LoRA, finder: SiteFinder) -> list[Site]:
    paths = finder.paths(config.targets)
    finder.check_types(paths, lora_supports, "Linear, Conv1D, Conv2d and Embedding", "LoRA")
    if is_pissa(config.init):
        from .pissa import check_pissa_sites

        check_pissa_sites(config, finder, paths)
    return [Site(host=p) for p in paths]


def _build(config: LoRA, site: Site, finder: SiteFinder) -> LoRAModule:
    base = finder.module(site.host)
    r, scale = config.rank_for(site.host), config.scale_for(site.host)
    if is_pissa(config.init):
        from .pissa import PiSSAModule

        return PiSSAModule(base, r, scale, config.dropout, config.init)
    return LoRAModule(base, r, scale, config.dropout, config.init)


register(MethodSpec(
    name="lora", config_cls=LoRA, kind=MethodKind.WEIGHT_DELTA, mergeable=True, routable=True,
    find_sites=_find_sites, build=_build, paper="Hu et al. 2021, arXiv:2106.09685",
    sites_used="Linear, Conv1D, Conv2d, Embedding (targets)",
))
