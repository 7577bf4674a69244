"""LoRA adapters as per-site factor pairs: reading them off a kit, re-factorising weight deltas,
and building a new LoRA adapter (config and modules) from factors.

Shared by :mod:`adapterkit.ops.combine.model` (combining) and :mod:`adapterkit.ops.extract.model`. Factors use
the conventions of :class:`adapterkit.ops.LoRAFactors`: ``A`` (r, in) and ``B`` (out, r) with
delta ``scale * B @ A``; a Conv2d ``lora_A`` (r, in, kh, kw) is flattened to (r, in*kh*kw).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from ...methods.lora import LoRA, LoRAModule
from .tensors import LoRAFactors, compute_dtype, factors_from_svd, retained_energy, truncated_factors

if TYPE_CHECKING:
    from ...core.records import AdapterRecord
    from ...kit import AdapterKit


def exact_pattern(path: str) -> str:
    """A target / rank pattern that matches module path ``path`` and nothing else."""
    return f"^{re.escape(path)}$"


def lora_modules(record: AdapterRecord) -> dict[str, LoRAModule]:
    """The modules of a LoRA adapter's record by host, typed as LoRA modules (the callers have
    checked that the adapter is a LoRA)."""
    return cast("dict[str, LoRAModule]", record.modules)


def read_factors(record: AdapterRecord) -> dict[str, LoRAFactors]:
    """The factors of every site of a LoRA adapter (detached; values as the forward sees them)."""
    out = {}
    for host, module in lora_modules(record).items():
        a = module.lora_A.detach()
        out[host] = LoRAFactors(A=a.flatten(1), B=module.lora_B.detach(), scale=float(module.scale))
    return out


def numerical_rank(s: Tensor, shape: tuple[int, ...]) -> int:
    """Number of singular values above ``max(s) * max(shape) * eps`` (as ``matrix_rank``)."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    tol = float(s[0]) * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tol).sum())


def refactor(delta: Tensor, rank: int | None = None, energy: float | None = None,
             dtype: torch.dtype | None = None) -> tuple[LoRAFactors, float]:
    """LoRA factors of the (out, in) ``delta`` by SVD: truncated to ``rank``, else to the
    smallest rank keeping ``energy`` of ``sum(sigma^2)``, else to the numerical rank (exact up
    to float rounding). Returns the factors (scale 1.0) and the retained energy."""
    cdt = compute_dtype(delta.dtype)
    u, s, vh = torch.linalg.svd(delta.to(cdt), full_matrices=False)  # u (out, m), vh (m, in)
    if rank is None and energy is None:
        k = numerical_rank(s, tuple(delta.shape))
        return factors_from_svd(u, s, vh, k, dtype), retained_energy(s, k)
    return truncated_factors(u, s, vh, rank, energy, dtype)


def _at_least_rank_one(f: LoRAFactors) -> LoRAFactors:
    """A LoRA module needs rank >= 1: a rank-0 pair becomes a zero rank-1 pair."""
    if f.rank > 0:
        return f
    return LoRAFactors(A=f.A.new_zeros(1, f.in_features), B=f.B.new_zeros(f.out_features, 1),
                       scale=f.scale)


def lora_config(ranks: dict[str, int], targets: tuple[str, ...] | None = None,
                dropout: float = 0.0) -> LoRA:
    """A LoRA config with the given per-site ranks: ``r`` is the most common rank (the larger
    on a tie) with ``alpha = r`` (scale 1 there), the other sites get exact ``rank_pattern``
    entries. ``targets`` defaults to exact patterns of the sites."""
    counts = Counter(max(r, 1) for r in ranks.values())
    r = max(counts, key=lambda k: (counts[k], k))
    pattern = tuple((exact_pattern(s), max(k, 1)) for s, k in ranks.items() if max(k, 1) != r)
    return LoRA(r=r, alpha=r, dropout=dropout, init="zeros",
                targets=targets or tuple(exact_pattern(s) for s in ranks),
                rank_pattern=pattern)


def build_lora(kit: AdapterKit, name: str, config: LoRA,
               factors: dict[str, LoRAFactors]) -> AdapterRecord:
    """Plan adapter ``name`` with ``config`` (not attached) and copy ``factors`` into it; each
    site's own scale is folded into ``B`` so that the module's delta equals ``factors[site]``'s."""
    record = kit.plan(name, config)
    missing = sorted(set(record.modules) ^ set(factors))
    if missing:
        raise ValueError(f"the config's sites and the factors disagree on {missing}")
    with torch.no_grad():
        for host, module in lora_modules(record).items():
            f = _at_least_rank_one(factors[host])
            if tuple(module.lora_A.flatten(1).shape) != tuple(f.A.shape):
                raise ValueError(f"{host}: factor A {tuple(f.A.shape)} does not fit lora_A "
                                 f"{tuple(module.lora_A.shape)}")
            module.lora_A.copy_(f.A.reshape(module.lora_A.shape))
            module.lora_B.copy_(f.B * (f.scale / module.scale))
    return record


def site_ranks(factors: dict[str, LoRAFactors]) -> dict[str, int]:
    return {site: max(f.rank, 1) for site, f in factors.items()}
