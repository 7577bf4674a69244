"""Combining several adapters (or task vectors) into one.

* ``combine_lora_cat``: exact LoRA sum by concatenating ranks (the result has rank sum r_i).
* ``combine_lora_svd``: exact LoRA sum re-factorised by truncated SVD (Eckart-Young).
* ``combine_linear``: parameter averaging of adapter states, as in MerA (He et al. 2023,
  "MerA: Merging Pretrained Adapters For Few-Shot Learning").
* ``combine_task_arithmetic``: weighted sum of task vectors (Ilharco et al. 2023, "Editing
  Models with Task Arithmetic").
* ``ties``: TIES-Merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When
  Merging Models"): trim, elect sign, disjoint merge.
* ``dare`` / ``dare_linear`` / ``dare_ties``: DARE (Yu et al. 2023, "Language Models are Super
  Mario: Absorbing Abilities from Homologous Models as a Free Lunch"): drop and rescale.

Generic states are ``dict[str, Tensor]``; all inputs must have the same keys and shapes, and a
``ValueError`` names every disagreement at once. Arithmetic runs in float32 (float64 stays
float64) and results take the dtype of the first input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, cast

import torch
from torch import Tensor

from ..lowrank.tensors import LoRAFactors, SvdMethod, compute_dtype, svd_of_product, truncated_factors

LoRAAdapter = Mapping[str, LoRAFactors]
State = Mapping[str, Tensor]


def _mismatches(shapes: Sequence[Mapping[str, tuple[int, ...]]], noun: str) -> list[str]:
    """Every missing key and every per-key shape disagreement across ``shapes``."""
    union = set().union(*shapes)
    problems = [
        f"{noun} {i} lacks {sorted(union - set(d))}" for i, d in enumerate(shapes) if union - set(d)
    ]
    common = set.intersection(*(set(d) for d in shapes))
    for key in sorted(common):
        seen = [d[key] for d in shapes]
        if len(set(seen)) > 1:
            listed = ", ".join(f"{noun} {i} {s}" for i, s in enumerate(seen))
            problems.append(f"{key!r}: {listed}")
    return problems


def _validate(
    shapes: Sequence[Mapping[str, tuple[int, ...]]], weights: Sequence[float], noun: str
) -> None:
    if not shapes:
        raise ValueError(f"need at least one {noun} to combine")
    if len(weights) != len(shapes):
        raise ValueError(f"got {len(shapes)} {noun}s but {len(weights)} weights")
    problems = _mismatches(shapes, noun)
    if problems:
        raise ValueError(
            f"cannot combine {noun}s, keys or shapes disagree:\n  " + "\n  ".join(problems)
        )


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")


# --------------------------------------------------------------------------- LoRA combinations


def _validate_lora(adapters: Sequence[LoRAAdapter], weights: Sequence[float]) -> None:
    shapes = [{s: (f.out_features, f.in_features) for s, f in ad.items()} for ad in adapters]
    _validate(shapes, weights, "adapter")


def _stacked_factors(
    factors: Sequence[LoRAFactors], weights: Sequence[float], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(B_cat, A_cat)`` with ``B_cat @ A_cat == sum_i w_i * scale_i * B_i @ A_i``."""
    a = torch.cat([f.A.to(dtype) for f in factors], dim=0)  # (sum r_i, in)
    b = torch.cat([f.B.to(dtype) * (w * f.scale) for f, w in zip(factors, weights)], dim=1)
    return b, a  # b: (out, sum r_i)


def combine_lora_cat(
    adapters: Sequence[LoRAAdapter], weights: Sequence[float]
) -> dict[str, LoRAFactors]:
    """Exact weighted sum by rank concatenation: at every site the result's ``delta()`` equals
    ``sum_i weights[i] * adapters[i][site].delta()``; ``weight * scale`` is folded into ``B``
    and the result's scale is 1.0. Ranks may differ; sites and (out, in) shapes must agree."""
    _validate_lora(adapters, weights)
    out: dict[str, LoRAFactors] = {}
    for site in adapters[0]:
        factors = [ad[site] for ad in adapters]
        b, a = _stacked_factors(factors, weights, factors[0].A.dtype)
        out[site] = LoRAFactors(A=a, B=b, scale=1.0)
    return out


def combine_lora_svd(
    adapters: Sequence[LoRAAdapter],
    weights: Sequence[float],
    rank: int | None = None,
    energy: float | None = None,
    method: SvdMethod = "auto",
) -> tuple[dict[str, LoRAFactors], dict[str, float]]:
    """Weighted LoRA sum re-factorised by truncated SVD.

    Per site, the exact sum ``M = sum_i w_i scale_i B_i A_i`` is decomposed (without forming
    ``M`` when the summed rank is small, see ``lowrank.svd_of_product``) and truncated to
    ``rank``, or else to the smallest rank keeping ``energy`` of ``sum(sigma^2)``, or else kept
    whole (exact). ``rank`` wins over ``energy``. ``sqrt(sigma)`` is split between ``A`` and
    ``B``; scale is 1.0. Returns the adapter and, per site, the retained energy
    ``sum(kept sigma^2) / sum(sigma^2)`` (1.0 for an all-zero sum).
    """
    _validate_lora(adapters, weights)
    out: dict[str, LoRAFactors] = {}
    energies: dict[str, float] = {}
    for site in adapters[0]:
        factors = [ad[site] for ad in adapters]
        dtype = factors[0].A.dtype
        b, a = _stacked_factors(factors, weights, compute_dtype(dtype))
        u, s, vh = svd_of_product(b, a, method)
        out[site], energies[site] = truncated_factors(u, s, vh, rank, energy, dtype)
    return out, energies


# --------------------------------------------------------------------- generic state merging


def _validate_states(states: Sequence[State], weights: Sequence[float]) -> None:
    _validate([{k: tuple(t.shape) for k, t in st.items()} for st in states], weights, "state")


def _weighted_sum(states: Sequence[State], weights: Sequence[float]) -> dict[str, Tensor]:
    _validate_states(states, weights)
    out: dict[str, Tensor] = {}
    for key, first in states[0].items():
        cdt = compute_dtype(first.dtype)
        # states are validated non-empty, so the sum is a tensor
        acc = cast(Tensor, sum(w * st[key].to(cdt) for st, w in zip(states, weights)))
        out[key] = acc.to(first.dtype)
    return out


def combine_linear(
    states: Sequence[State], weights: Sequence[float] | None = None
) -> dict[str, Tensor]:
    """Parameter averaging (MerA): ``sum_i weights[i] * states[i][key]`` for every key.
    ``weights=None`` means the plain mean (``1/n`` each)."""
    if weights is None:
        weights = [1.0 / len(states)] * len(states) if states else []
    return _weighted_sum(states, weights)


def combine_task_arithmetic(deltas: Sequence[State], weights: Sequence[float]) -> dict[str, Tensor]:
    """Task arithmetic: ``tau = sum_i weights[i] * deltas[i]`` (deltas are fine-tuned minus base
    parameters; the caller adds ``tau`` to the base)."""
    return _weighted_sum(deltas, weights)


# ------------------------------------------------------------------------------ TIES and DARE


def trim_top_density(t: Tensor, density: float) -> Tensor:
    """Keep the ``k = floor(density * numel + 0.5)`` entries of largest ``|t|`` and zero the rest.
    Equal magnitudes are ranked by flat (row-major) index, lower index first."""
    _check_density(density)
    flat = t.reshape(-1)  # (numel,)
    k = math.floor(density * flat.numel() + 0.5)
    order = torch.sort(flat.abs(), descending=True, stable=True).indices
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order[:k]] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(t.shape)  # back to t.shape


def _elect_and_merge(values: Tensor) -> Tensor:
    """Sign election + disjoint mean over dim 0 of ``values`` (T, *shape)."""
    elected = torch.sign(values.sum(dim=0))  # (*shape), in {-1, 0, +1}
    agree = (torch.sign(values) == elected) & (elected != 0)  # (T, *shape)
    count = agree.sum(dim=0).clamp(min=1)
    return torch.where(agree, values, torch.zeros_like(values)).sum(dim=0) / count


def ties(deltas: Sequence[State], weights: Sequence[float], density: float) -> dict[str, Tensor]:
    """TIES-Merging of task vectors, per tensor (key) and per entry ``p``:

    1. trim: ``t_i = trim_top_density(deltas[i][key], density)`` (top-``density`` by magnitude
       within each tensor);
    2. weight: ``v_i = weights[i] * t_i``;
    3. elect: ``gamma_p = sign(sum_i v_i[p])``;
    4. disjoint mean: ``A_p = {i : sign(v_i[p]) == gamma_p != 0}``,
       ``merged[p] = sum_{i in A_p} v_i[p] / |A_p|`` and 0 when ``A_p`` is empty (this includes
       ``gamma_p == 0``).

    With all weights equal to ``lam`` this is the paper's ``lam * tau_m`` exactly; unequal
    weights act as per-task scaling applied before the election (as in PEFT's ``ties``).
    """
    _check_density(density)
    _validate_states(deltas, weights)
    out: dict[str, Tensor] = {}
    for key, first in deltas[0].items():
        cdt = compute_dtype(first.dtype)
        values = [w * trim_top_density(d[key].to(cdt), density) for d, w in zip(deltas, weights)]
        out[key] = _elect_and_merge(torch.stack(values)).to(first.dtype)  # stack: (T, *shape)
    return out


def dare_drop(t: Tensor, density: float, generator: torch.Generator | None = None) -> Tensor:
    """DARE on one tensor: draw ``u = torch.rand(t.shape, generator=generator)`` (float32, on
    ``t.device``), keep entries with ``u < density`` rescaled by ``1 / density``, zero the rest."""
    _check_density(density)
    u = torch.rand(t.shape, generator=generator, device=t.device)
    return torch.where(u < density, t / density, torch.zeros_like(t))


def dare(
    deltas: Sequence[State],
    weights: Sequence[float],
    density: float,
    *,
    method: Literal["linear", "ties"] = "linear",
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> dict[str, Tensor]:
    """DARE, then merge. ``d_i = dare_drop(deltas[i][key], density)`` and ``v_i = w_i * d_i``;
    ``"linear"`` returns ``sum_i v_i``, ``"ties"`` the sign election + disjoint mean of ``ties``
    steps 3-4 on ``v_i`` (DARE replaces the magnitude trim).

    Randomness: ``generator`` if given, else a fresh generator seeded with ``seed``, else
    torch's global generator. Draw order: for each key in ``deltas[0]`` order, for each task in
    order, one ``dare_drop`` draw; so the result is deterministic given the generator state.
    """
    _check_density(density)
    if method not in ("linear", "ties"):
        raise ValueError(f"unknown DARE method {method!r}; use 'linear' or 'ties'")
    _validate_states(deltas, weights)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, first in deltas[0].items():
        cdt = compute_dtype(first.dtype)
        values = [
            w * dare_drop(d[key].to(cdt), density, generator) for d, w in zip(deltas, weights)
        ]
        stacked = torch.stack(values)  # (T, *shape)
        merged = stacked.sum(dim=0) if method == "linear" else _elect_and_merge(stacked)
        out[key] = merged.to(first.dtype)
    return out


def dare_linear(
    deltas: Sequence[State],
    weights: Sequence[float],
    density: float,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> dict[str, Tensor]:
    """``dare(..., method="linear")``: weighted sum of DARE'd task vectors."""
    return dare(deltas, weights, density, method="linear", generator=generator, seed=seed)


def dare_ties(
    deltas: Sequence[State],
    weights: Sequence[float],
    density: float,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> dict[str, Tensor]:
    """``dare(..., method="ties")``: DARE, then TIES sign election and disjoint mean."""
    return dare(deltas, weights, density, method="ties", generator=generator, seed=seed)
