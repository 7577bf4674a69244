"""Post-hoc LoRA extraction from a fine-tuned checkpoint.

The weight difference ``W_ft - W_base`` of each linear layer is factorised by truncated SVD, as
in PHLoRA (post-hoc LoRA extraction from full-rank fine-tuned weights) with an "ERE"-style
energy criterion: keep the smallest rank whose ``sum(sigma^2)`` reaches ``energy`` of the total
(equivalently, the relative squared Frobenius error is at most ``1 - energy``). By
Eckart-Young the truncation is the best possible at that rank.

``extract_lora_state`` streams: it reads one base tensor and one fine-tuned tensor at a time, so
peak memory is about one layer beyond what the caller already holds, plus the kept factors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..lowrank.tensors import LoRAFactors, compute_dtype, truncated_factors


def _zero_rank(out_features: int, in_features: int, dtype: torch.dtype) -> LoRAFactors:
    """Rank-0 factors: A (0, in), B (out, 0); their delta() is the (out, in) zero matrix."""
    return LoRAFactors(
        A=torch.zeros(0, in_features, dtype=dtype), B=torch.zeros(out_features, 0, dtype=dtype)
    )


def extract_lora_from_weights(
    w_base: Tensor, w_ft: Tensor, rank: int | None = None, energy: float | None = 0.9
) -> tuple[LoRAFactors, float]:
    """LoRA factors approximating ``w_ft - w_base`` (both (out, in)).

    ``rank`` overrides ``energy``; with both ``None`` the full-rank (exact) factorisation is
    returned. Returns ``(factors, retained_energy)`` where retained energy is
    ``sum(kept sigma^2) / sum(sigma^2)``. ``sqrt(sigma)`` is split between ``A`` and ``B``, the
    scale is 1.0 and the factors have ``w_base``'s dtype. A zero difference yields rank-0
    factors (``A`` (0, in), ``B`` (out, 0)) whose ``delta()`` is zeros, with energy 1.0.
    """
    if w_base.dim() != 2 or w_base.shape != w_ft.shape:
        raise ValueError(
            f"need two 2-D weights of one shape, got {tuple(w_base.shape)} and {tuple(w_ft.shape)}"
        )
    cdt = compute_dtype(w_base.dtype)
    delta = w_ft.to(cdt) - w_base.to(cdt)  # (out, in)
    if not bool(delta.any()):
        return _zero_rank(delta.shape[0], delta.shape[1], w_base.dtype), 1.0
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # u (out, m), s (m,), vh (m, in)
    return truncated_factors(u, s, vh, rank, energy, w_base.dtype)


def site_of(param_name: str) -> str:
    """Site (module path) of a weight name: a trailing ``.weight`` is dropped."""
    return param_name.removesuffix(".weight")


def extract_lora_state(
    base_items: Iterable[tuple[str, Tensor]],
    ft_lookup: Callable[[str], Tensor],
    rank: int | None = None,
    energy: float | None = 0.9,
    include: Callable[[str], bool] | None = None,
) -> tuple[dict[str, LoRAFactors], dict[str, dict[str, Any]]]:
    """Extract a LoRA adapter layer by layer.

    ``base_items`` yields ``(param_name, base_weight)`` (it may be a lazy generator over a
    checkpoint); for every 2-D weight accepted by ``include`` (default: all), ``ft_lookup`` is
    asked for the fine-tuned tensor of the same name and the pair is factorised with
    ``extract_lora_from_weights(rank=rank, energy=energy)`` before the next item is read.
    Tensors of other ranks (biases, norms) are skipped. Sites are named by ``site_of``.

    Returns ``(adapter, report)``. ``report[site]`` is ``{"rank", "energy", "params",
    "full_params"}``, with ``params = rank * (in + out)`` and ``full_params = out * in``. Sites
    whose difference is exactly zero are reported with rank 0 but left out of the adapter.
    """
    adapter: dict[str, LoRAFactors] = {}
    report: dict[str, dict[str, Any]] = {}
    for name, w_base in base_items:
        if w_base.dim() != 2 or (include is not None and not include(name)):
            continue
        factors, kept = extract_lora_from_weights(w_base, ft_lookup(name), rank, energy)
        site = site_of(name)
        if site in report:
            raise ValueError(f"two weights map to site {site!r} (last one: {name!r})")
        report[site] = {
            "rank": factors.rank,
            "energy": kept,
            "params": factors.num_params,
            "full_params": w_base.numel(),
        }
        if factors.rank > 0:
            adapter[site] = factors
    return adapter, report
