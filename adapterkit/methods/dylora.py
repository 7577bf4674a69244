"""DyLoRA: one LoRA adapter trained for a whole range of ranks.

Valipour et al., 2023, "DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic
Search-Free Low-Rank Adaptation" (arXiv:2210.07558). Each training forward truncates the factors
to a rank ``b`` drawn uniformly from ``[min_rank, r]`` and scales the delta by ``alpha / b``, as the
paper's forward pass ``h = W0 x + (alpha / b) W_up[:, :b] W_dw[:b] x`` does; so the first ``b``
rank components learn to work on their own, and the inference rank is chosen after training
(:func:`set_dylora_rank`) without retraining.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..config import check_positive
from ..core.base import MethodKind, MethodSpec, Site
from ..errors import ConfigError
from . import register
from .lora import LoRAModule, _as_targets, lora_supports, low_rank_weight

if TYPE_CHECKING:
    from ..core.sites import SiteFinder
    from ..kit import AdapterKit


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DyLoRA:
    """Config of a DyLoRA adapter: LoRA factors ``A``: (r, in) and ``B``: (out, r) used at a rank
    ``b``: ``W' = W + (alpha / b) * B[:, :b] @ A[:b]``.

    In training mode every forward of a site draws its own ``b`` uniformly from
    ``[min_rank, r]`` (from torch's global generator, so ``torch.manual_seed`` fixes the draws),
    and only the first ``b`` rows of ``A`` and columns of ``B`` take part (and get gradients). In
    eval mode, and for merging, ``b = rank`` (``None``: ``r``); :func:`set_dylora_rank` changes it
    on an added adapter. The scale is ``alpha / b``, the paper's, so a truncation to rank ``b``
    is the plain ``LoRA(r=b, alpha=alpha)`` with the first ``b`` components. ``A`` starts
    Kaiming-uniform and ``B`` at zero (for Embedding, the other way round), as LoRA's.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn.q", "attn.v")
    min_rank: int = 1
    rank: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.r) or self.r <= 0:
            raise ConfigError(f"DyLoRA.r must be a positive integer, got {self.r!r}")
        check_positive("DyLoRA", "alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"DyLoRA.dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_int(self.min_rank) or not 1 <= self.min_rank <= self.r:
            raise ConfigError(
                f"DyLoRA.min_rank must be an integer in [1, r={self.r}], got {self.min_rank!r}")
        if self.rank is not None and (not _is_int(self.rank)
                                      or not self.min_rank <= self.rank <= self.r):
            raise ConfigError(f"DyLoRA.rank (the inference rank) must be None or an integer in "
                              f"[min_rank={self.min_rank}, r={self.r}], got {self.rank!r}")
        object.__setattr__(self, "targets", _as_targets(self.targets))

    @property
    def eval_rank(self) -> int:
        return self.r if self.rank is None else self.rank


class DyLoRAModule(LoRAModule):
    """LoRA's ``lora_A``: (r, in) — (r, in, kh, kw) for Conv2d — and ``lora_B``: (out, r), used
    at rank ``b``: for ``x``: (..., in) the delta is ``(alpha / b) (x @ A[:b].T) @ B[:, :b].T``:
    (..., out). ``b`` is drawn in ``[min_rank, r]`` on each training forward (the last one is in
    ``last_rank``) and is ``rank`` otherwise; ``scale`` is ``alpha / rank``."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, min_rank: int,
                 rank: int) -> None:
        super().__init__(base, r, alpha / rank, dropout, "default")
        self.alpha, self.min_rank, self.rank = alpha, min_rank, rank
        self.last_rank: int | None = None

    def set_rank(self, rank: int) -> None:
        """The rank of eval-mode forwards and of ``delta_weight``."""
        self.rank, self.scale = rank, self.alpha / rank

    def sample_rank(self) -> int:
        return int(torch.randint(self.min_rank, self.lora_A.shape[0] + 1, (1,)).item())

    def truncated(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``A[:rank]``, ``B[:, :rank]`` and the scale ``alpha / rank``."""
        return self.lora_A[:rank], self.lora_B[:, :rank], self.alpha / rank

    def _run(self, x: torch.Tensor, base: nn.Module) -> tuple[torch.Tensor, float]:
        """The unscaled low-rank output at this forward's rank, and its scale."""
        rank = self.sample_rank() if self.training else self.rank
        self.last_rank = rank
        a, b, scale = self.truncated(rank)
        return self._low_rank(x, base, factors=(a, b)), scale

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        low, scale = self._run(x, base)
        return (low * scale).to(h.dtype)

    def apply_delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        low, scale = self._run(x, base)
        return torch.add(h, low.to(h.dtype), alpha=scale)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        return low_rank_weight(*self.truncated(self.rank), base)


def set_dylora_rank(kit: AdapterKit, name: str, rank: int | None) -> None:
    """Use DyLoRA adapter ``name`` at inference rank ``rank`` (``None``: its ``r``) from now on:
    its config's ``rank`` changes (and is saved with it); a merged adapter is merged again at
    the new rank."""
    record = kit.record(name)
    if not isinstance(record.config, DyLoRA):
        raise ConfigError(f"adapter {name!r} uses {record.spec.name}, not dylora: it has no "
                          "inference rank to set")
    config = dataclasses.replace(record.config, rank=rank)  # validates the range
    merged = record.merged
    if merged:
        kit.unmerge(name)
    record.config = config
    for module in record.modules.values():
        cast(DyLoRAModule, module).set_rank(config.eval_rank)
    if merged:
        kit.merge(name)


def _find_sites(config: DyLoRA, finder: SiteFinder) -> list[Site]:
    paths = finder.paths(config.targets)
    finder.check_types(paths, lora_supports, "Linear, Conv1D, Conv2d and Embedding", "DyLoRA")
    return [Site(host=p) for p in paths]


def _build(config: DyLoRA, site: Site, finder: SiteFinder) -> DyLoRAModule:
    return DyLoRAModule(finder.module(site.host), config.r, config.alpha, config.dropout,
                        config.min_rank, config.eval_rank)


register(MethodSpec(
    name="dylora", config_cls=DyLoRA, kind=MethodKind.WEIGHT_DELTA, mergeable=True,
    find_sites=_find_sites, build=_build, paper="Valipour et al. 2023, arXiv:2210.07558",
    sites_used="Linear, Conv1D, Conv2d, Embedding (targets)",
))
