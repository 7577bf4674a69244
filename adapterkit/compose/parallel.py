"""``Parallel``: the model inputs are repeated once, at the top-level module, and each replica runs
its own child (a BatchSplit inside). The model's output keeps its type with batch ``n * B``,
replica-major (rows ``[i*B, (i+1)*B)`` belong to child i); :func:`split_parallel` splits it."""

from __future__ import annotations

from typing import Any

import torch

from ..methods.inputs import get_cache
from .blocks import CompositionError

#: keyword arguments that are not per example: ``cache_position`` (the new tokens' KV-cache
#: indices, which transformers before 5.4 passes in generate()) is one vector for the batch
NOT_PER_EXAMPLE = ("cache_position",)


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """Dim 0 of the first tensor argument (input_ids, inputs_embeds, pixel_values, ...)."""
    per_example = [v for k, v in kwargs.items() if k not in NOT_PER_EXAMPLE]
    for value in (*args, *per_example):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


class ParallelPreHook:
    """A forward pre-hook (with kwargs) repeating every tensor whose dim 0 is the batch size
    ``B``, ``attention_mask`` and labels included, ``state.replicas`` times along dim 0. An
    object rather than a closure, so that a deep copy of the model binds to the copy's state."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        state = self.state
        n = state.replicas
        if n <= 1:
            return None
        # generate() passes a cache, or cache_position before transformers 5.4 (whose first
        # forward creates the cache itself)
        if get_cache(kwargs) is not None or kwargs.get("cache_position") is not None:
            raise CompositionError(
                "Parallel runs single forward passes; generate() and KV caches are not supported "
                "(run one generate() per adapter, or use Route)")
        b = batch_size(args, kwargs)
        if b is None:
            return None
        state.parallel_batch = b

        def rep(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b:
                return v.repeat(n, *([1] * (v.dim() - 1)))
            return v
        return tuple(rep(a) for a in args), {
            k: v if k in NOT_PER_EXAMPLE else rep(v) for k, v in kwargs.items()}


def split_parallel(output: Any, n: int, b: int) -> list[Any]:
    """The n per-child outputs of a Parallel forward: every tensor with dim 0 ``n * b`` (also
    inside tuples, lists, dicts and ``ModelOutput``) is cut into n; other values are shared."""
    def part(value: Any, i: int) -> Any:
        if isinstance(value, torch.Tensor):
            return value[i * b:(i + 1) * b] if value.dim() and value.shape[0] == n * b else value
        if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
            return type(value)(part(v, i) for v in value)
        if isinstance(value, dict):
            items = {k: part(v, i) for k, v in value.items()}
            return type(value)(**items) if type(value) is not dict else items
        return value

    return [part(output, i) for i in range(n)]
