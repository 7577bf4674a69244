"""Merging weight deltas into base weights and taking them out again."""

from __future__ import annotations

import torch


def add_weight_delta(weight: torch.Tensor, delta: torch.Tensor, sign: float = 1.0) -> None:
    """``weight += sign * delta`` in place, in the weight's dtype; shapes must agree."""
    if weight.shape != delta.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} != weight shape {tuple(weight.shape)}")
    weight.data.add_(delta.to(weight.dtype), alpha=sign)


def merged_weight(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """A new tensor ``weight + delta`` (pure)."""
    return weight + delta.to(weight.dtype)
