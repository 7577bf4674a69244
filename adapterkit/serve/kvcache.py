"""The engine's key/value cache: one preallocated buffer per layer, one slot per running row.

Rows occupy slots ``0 .. n-1``; row ``i`` holds its ``L_i`` cached positions at ``[0, L_i)`` of
its slot (prefix and prompt slots included: a prefix or prompt adapter's effect is all in these
positions). A decode step writes each row's new key and value at its own position ``L_i`` and
attends over ``[0, max L + 1)`` of every slot with a 4D mask that hides each row's positions past
``L_i``, so rows of any lengths share one forward, and a row joins or leaves without touching the
other rows' entries (a leaving row's slot takes the last row's, one row copied). The sequence
capacity doubles when a row outgrows it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from ..core.requires import require

#: the first transformers release whose per-layer ``Cache`` API (``CacheLayerMixin``, a Cache
#: built from ``layers=``, ``get_mask_sizes``) this cache plugs into
MIN_TRANSFORMERS = "5.13"


class SlotKV:
    """Per-layer (slots, kv_heads, capacity, head_dim) key and value buffers."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, slots: int,
                 dtype: torch.dtype, device: torch.device, capacity: int = 256) -> None:
        require("transformers", MIN_TRANSFORMERS, "serving decoder models (the engine's KV cache)",
                "its per-layer Cache API")
        _classes()
        self.shape = (slots, kv_heads, capacity, head_dim)
        self.dtype, self.device = dtype, device
        self.keys = [torch.zeros(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.lengths: list[int] = []  # cached positions of each running row

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def slots(self) -> int:
        return self.shape[0]

    @property
    def capacity(self) -> int:
        return self.shape[2]

    def usage(self) -> float:
        """Fraction of the buffer's positions that running rows hold."""
        return sum(self.lengths) / float(self.slots * self.capacity)

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        if cap == self.capacity:
            return
        slots, heads, old, dim = self.shape
        self.shape = (slots, heads, cap, dim)
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                new = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
                new[:, :, :old] = buf
                buffers[i] = new

    def insert(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Add a row whose cache is ``kv`` (per layer (kv_heads, L, head_dim) keys and values);
        returns its row index."""
        row = self.rows
        if row >= self.slots:
            raise RuntimeError(f"all {self.slots} cache slots are in use")
        length = kv[0][0].shape[1]
        self._grow(length + 1)
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][row, :, :length] = k
            self.values[layer][row, :, :length] = v
        self.lengths.append(length)
        return row

    def remove(self, row: int) -> int | None:
        """Free ``row``: the last row moves into its slot. Returns the index that moved (the old
        last row), or None when ``row`` was the last."""
        last = self.rows - 1
        if row != last:
            length = self.lengths[last]
            for buffers in (self.keys, self.values):
                for buf in buffers:
                    buf[row, :, :length] = buf[last, :, :length]
            self.lengths[row] = length
        self.lengths.pop()
        return last if row != last else None

    def step(self) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(cache, 4D additive mask, position_ids) for one decode token per running row."""
        n = self.rows
        self._grow(max(self.lengths) + 1)
        pos = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        view = int(max(self.lengths)) + 1
        visible = torch.arange(view, device=self.device)[None, :] <= pos[:, None]
        mask = torch.zeros(n, 1, 1, view, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible[:, None, None, :], torch.finfo(self.dtype).min)
        cache_cls, layer_cls = _classes()
        layers = [layer_cls(self.keys[i], self.values[i], pos, n, view)
                  for i in range(len(self.keys))]
        return cache_cls(layers=layers), mask, pos[:, None]

    def advance(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]


@cache
def _classes() -> tuple[Any, Any]:
    """transformers' ``Cache`` and the per-step layer class built on its ``CacheLayerMixin``
    (transformers 5: a Cache is a list of per-layer objects)."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    return Cache, type("StepLayer", (_StepLayer, CacheLayerMixin), {})


class _StepLayer:
    """One layer's view for one decode step: writes row i's new entry at ``pos[i]``; combined
    with transformers' ``CacheLayerMixin`` by :func:`_classes`."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, n: int,
                 view: int) -> None:
        super().__init__()
        self.buf_k, self.buf_v, self.pos, self.n, self.view = keys, values, pos, n, view
        self.rows = torch.arange(n, device=keys.device)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The buffers exist before the step."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.buf_k[self.rows, :, self.pos] = key_states[:, :, 0]
        self.buf_v[self.rows, :, self.pos] = value_states[:, :, 0]
        return self.buf_k[:self.n, :, :self.view], self.buf_v[:self.n, :, :self.view]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.view, 0

    def get_seq_length(self) -> int:
        return self.view - 1

    def get_max_length(self) -> int:
        return -1
