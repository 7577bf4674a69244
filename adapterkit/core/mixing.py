"""Per-token mixtures of adapters: gate weights (soft, top-k renormalised), the load-balancing
losses of a router, and the batched LoRA kernel that applies per-token weights to stacked LoRA
experts in two matmuls, without a loop over experts.

Shapes: ``logits``, ``weights``: (..., n) for n experts; a LoRA expert k has ``lora_A``:
(r_k, in), ``lora_B``: (out, r_k) and ``scale`` s_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .stack_cache import StackCache

#: the router's auxiliary losses (``Mixture(balance=...)``)
BALANCE_LOSSES = ("switch", "specialization")


def gate_weights(logits: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, probs)`` over the last dim: ``probs = softmax(logits)``; without ``top_k``
    (or ``top_k >= n``) the weights are ``probs``, else the softmax over the ``top_k`` largest
    logits (renormalised to sum 1) scattered back, zero elsewhere."""
    probs = torch.softmax(logits, dim=-1)
    if top_k is None or top_k >= logits.shape[-1]:
        return probs, probs
    values, index = logits.topk(top_k, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, index, torch.softmax(values, dim=-1))
    return weights, probs


def topk_softmax(scores: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    """Softmax of ``scores / temperature`` over the ``top_k`` largest scores (all without
    ``top_k``), zero elsewhere: Arrow's routing weights."""
    return gate_weights(scores / temperature, top_k)[0]


def balance_loss(kind: str, probs: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """The router's auxiliary loss over every token of ``probs``: (..., n), the full softmax
    of the router's logits, for a router selecting ``top_k`` experts (None: soft):

    - ``"switch"`` (Fedus et al. 2021, arXiv:2101.03961): ``n * sum_i f_i P_i``, ``f_i`` the
      share of the tokens' top-k selections that go to expert i (top-1 for a soft router),
      ``P_i`` the mean router probability of expert i; 1 when balanced.
    - ``"specialization"`` (LoRA-Mixer's balance term, Li et al. 2025, arXiv:2507.00029):
      ``(log n - H(P)) / log n + mean_t H(p_t) / log n``: the first term is zero when the mean
      routing distribution ``P`` is uniform (global balance), the second when each token's
      distribution ``p_t`` is one-hot (specialised decisions); 0 for one expert.
    """
    n = probs.shape[-1]
    p = probs.reshape(-1, n).float()
    if kind == "switch":
        k = 1 if top_k is None else min(top_k, n)
        chosen = torch.zeros_like(p).scatter(1, p.detach().topk(k, dim=1).indices, 1.0)
        f = chosen.sum(0) / chosen.sum().clamp_min(1.0)
        return n * (f * p.mean(0)).sum()
    if kind == "specialization":
        if n == 1:
            return p.sum() * 0.0
        mean = p.mean(0)
        global_term = math.log(n) + (mean * mean.clamp_min(1e-12).log()).sum()
        token_term = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
        return (global_term + token_term) / math.log(n)
    raise ValueError(f"unknown balance loss {kind!r}; use one of {BALANCE_LOSSES}")


def _stacks(modules: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor]:
    """``A_cat``: (R, in), ``B_cat``: (out, R), the expert of each of the R slots, and each
    slot's scale (R,)."""
    a = torch.cat([m.lora_A for m in modules], 0)
    b = torch.cat([m.lora_B for m in modules], 1)
    ranks = torch.tensor([m.lora_A.shape[0] for m in modules], device=a.device)
    slot = torch.repeat_interleave(torch.arange(len(modules), device=a.device), ranks)
    scale = torch.tensor([float(m.scale) for m in modules], dtype=a.dtype, device=a.device)
    return a, b, slot, torch.repeat_interleave(scale, ranks)


def lora_mix(modules: Sequence[Any], weights: torch.Tensor, x: torch.Tensor,
             cache: StackCache | None = None) -> torch.Tensor:
    """``sum_k weights[..., k] * s_k * B_k A_k x`` for ``x``: (N, ..., in) and ``weights``:
    (N, ..., K) (or broadcastable to it, e.g. (N, 1, K) for one weight vector per sequence),
    as ``((x @ A_cat^T) * W) @ B_cat^T`` with ``W``: (N, ..., R) holding ``weights[..., k] *
    s_k`` on expert k's slots. Stacks come from ``cache`` while the experts are unchanged."""
    cache = cache if cache is not None else StackCache()
    (a, b, slot, scale), _ = cache.stacks("mix-lora", modules, lambda: _stacks(modules))
    t = F.linear(x.to(a.dtype), a)  # (N, ..., R)
    w = weights.to(a.dtype).index_select(-1, slot) * scale  # (N, ..., R)
    return F.linear(t * w, b)  # (N, ..., out)
