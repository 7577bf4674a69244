"""Per-host caches for routing kernels: stacked adapter weights and what is derived from them.

A cached stack is valid while every parameter it was built from is the same tensor with the same
``_version`` counter (every in-place change, optimiser steps and ``copy_`` included, bumps it)
and the same storage (``.to()`` or ``.data =`` replace it). Where gradients must flow into the
adapters, nothing is cached: stacks are rebuilt in the autograd graph on every call. Cached
tensors are built outside inference mode, so they can be used both inside and outside it.

A caller that passes the same ``modules`` tuple on every call (a route's per-host group) is found
by that tuple's identity (a tuple cannot change its members), without a key over its K modules;
the version check reads the 2K counters with ``map`` in C, so a hit runs no Python loop over the
adapters.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


_VERSION = operator.attrgetter("_version")
_GRAD = operator.attrgetter("requires_grad")


def _params(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def _stamp(params: list[torch.Tensor]) -> tuple[list[int], list[int]]:
    """Every tensor's version counter and data pointer, read in C."""
    return list(map(_VERSION, params)), list(map(torch.Tensor.data_ptr, params))


class StackCache:
    """A small LRU per host. ``stacks`` validates by parameter versions; ``derived`` by the
    identity of its key objects (held strongly, so an id is never reused while cached)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._entries: OrderedDict[Any, tuple[Any, Any]] = OrderedDict()
        self._alias: dict[tuple[str, int], tuple[Sequence[nn.Module], Any]] = {}

    def clear(self) -> None:
        self._entries.clear()
        self._alias.clear()

    def _put(self, key: Any, check: Any, value: Any) -> None:
        self._entries[key] = (check, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def _find(self, tag: str, modules: Sequence[nn.Module]) -> tuple[Any, Any]:
        """(key, entry or None) of ``modules``: by the tuple's identity when it was seen
        before, else by its modules' ids."""
        alias = self._alias.get((tag, id(modules))) if type(modules) is tuple else None
        if alias is not None and alias[0] is modules:
            hit = self._entries.get(alias[1])
            if hit is not None:
                return alias[1], hit
        key = (tag, tuple(map(id, modules)))
        hit = self._entries.get(key)
        if hit is not None and not all(map(operator.is_, hit[0][0], modules)):
            hit = None  # an id reused by another module
        if type(modules) is tuple:
            if len(self._alias) >= 4 * self.size:
                self._alias.clear()
            self._alias[(tag, id(modules))] = (modules, key)  # held: its id is not reused
        return key, hit

    def stacks(self, tag: str, modules: Sequence[nn.Module], build: Callable[[], T]) -> tuple[T, bool]:
        """``(build(), cached)``: a cached value when the modules' parameters are unchanged."""
        key, hit = self._find(tag, modules)
        params = hit[0][1] if hit is not None else _params(modules)
        if torch.is_grad_enabled() and any(map(_GRAD, params)):
            return build(), False  # gradients must reach the adapters: no cache
        stamp = _stamp(params)
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
