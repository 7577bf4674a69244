"""Per-host caches for routing kernels: stacked adapter weights and what is derived from them.

A cached stack is valid while every parameter it was built from is the same tensor with the same
``_version`` counter (every in-place change, optimiser steps and ``copy_`` included, bumps it)
and the same storage (``.to()`` or ``.data =`` replace it). Where gradients must flow into the
adapters, nothing is cached: stacks are rebuilt in the autograd graph on every call. Cached
tensors are built outside inference mode, so they can be used both inside and outside it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def _params(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


class StackCache:
    """A small LRU per host. ``stacks`` validates by parameter versions; ``derived`` by the
    identity of its key objects (held strongly, so an id is never reused while cached)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._entries: OrderedDict[Any, tuple[Any, Any]] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    def _put(self, key: Any, check: Any, value: Any) -> None:
        self._entries[key] = (check, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def stacks(self, tag: str, modules: Sequence[nn.Module], build: Callable[[], T]) -> tuple[T, bool]:
        """``(build(), cached)``: a cached value when the modules' parameters are unchanged."""
        key = (tag, tuple([id(m) for m in modules]))
        hit = self._entries.get(key)
        if hit is not None and not all([a is b for a, b in zip(hit[0][0], modules)]):
            hit = None  # an id reused by another module
        params = hit[0][1] if hit is not None else _params(modules)
        if torch.is_grad_enabled() and any([p.requires_grad for p in params]):
            return build(), False  # gradients must reach the adapters: no cache
        stamp = [(p._version, p.data_ptr()) for p in params]
        if hit is not None and hit[0][2] == stamp:
            self._entries.move_to_end(key)
            return hit[1], True
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        self._put(key, (tuple(modules), params, stamp), value)
        return value, True

    def keyed(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()`` cached under ``key`` (the cache is cleared when the slot changes)."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit[1]
        value = plain(build)
        self._put(key, None, value)
        return value

    def derived(self, tag: str, sources: Sequence[Any], build: Callable[[], T]) -> T:
        """``build()`` cached by the identity of ``sources`` (call only with cached sources)."""
        key = (tag, tuple(id(s) for s in sources))
        hit = self._entries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], sources)):
            self._entries.move_to_end(key)
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        self._put(key, tuple(sources), value)
        return value


def plain(fn: Callable[[], T]) -> T:
    """``fn()`` outside inference mode and autograd, for small tensors kept across calls."""
    with torch.inference_mode(False), torch.no_grad():
        return fn()
