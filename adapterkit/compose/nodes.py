"""The executor's compiled compositions: one node class per block, each written once against the
primitive every adapter module gives, ``delta(h, x, base)``.

At one host a node maps the host output ``h``: (N, ..., out) to the new output, given the
adapters' inputs (:class:`Inputs`) and the host's slot (its adapter modules by name). An adapter
absent from a host is the identity there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..core.base import AdapterModule, Tap
from .blocks import CompositionError

if TYPE_CHECKING:
    from ..methods.fusion import FusionModule
    from .executor import AdapterSlot as Slot


class Inputs:
    """The inputs adapters read at one host: the host input ``x`` and the tapped inputs."""

    __slots__ = ("taps", "x")

    def __init__(self, x: Any, taps: dict[Tap, Any] | None = None) -> None:
        self.x = x
        self.taps = taps

    def of(self, module: AdapterModule) -> Any:
        """What ``module`` reads: its tapped input if it has a tap, else the host input."""
        if module.tap is None:
            return self.x
        assert self.taps is not None, "a module with a tap reads the taps of its slot"
        return self.taps[module.tap]

    def _map(self, fn: Any) -> Inputs:
        taps = {t: fn(v) for t, v in self.taps.items()} if self.taps else self.taps
        return Inputs(fn(self.x), taps)

    def rows(self, index: slice | torch.Tensor) -> Inputs:
        """The rows ``index`` of dim 0 of every input."""
        def take(t: Any) -> Any:
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                return t
            return t[index] if isinstance(index, slice) else t.index_select(0, index)
        return self._map(take)

    def positions(self, index: slice) -> Inputs:
        """The positions ``index`` of dim 1 (the sequence) of every input."""
        return self._map(lambda t: t[:, index] if isinstance(t, torch.Tensor) and t.dim() > 1 else t)


class Node:
    """A compiled composition at one host."""

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, h: torch.Tensor, inp: Inputs, slot: Slot,
              host: nn.Module) -> torch.Tensor | None:
        """The additive change ``run(h) - h``; None where nothing changes."""
        out = self.run(h, inp, slot, host)
        return None if out is h else out - h


class Identity(Node):
    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        return h


class Leaf(Node):
    """One adapter: ``h + delta(h, x)`` (merged adapters are in the weights already)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        mod = slot.adapter(self.name)
        if mod is None or mod.merged:
            return h
        return mod(h, inp.of(mod), host)  # the module call: FSDP2 and ZeRO-3 hooks fire

    def delta(self, h: torch.Tensor, inp: Inputs, slot: Slot,
              host: nn.Module) -> torch.Tensor | None:
        mod = slot.adapter(self.name)
        if mod is None or mod.merged:
            return None
        return mod(h, inp.of(mod), host, True)


class StackNode(Node):
    """Children in order, each on the previous output (weight-delta names compiled first)."""

    def __init__(self, children: Sequence[Node]) -> None:
        self.children = tuple(children)

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        for child in self.children:
            h = child.run(h, inp, slot, host)
        return h


class AverageNode(Node):
    """``h + sum_i w_i delta_i(h, x)``, every child on the same ``h``."""

    def __init__(self, children: Sequence[Node], weights: Sequence[float]) -> None:
        self.children = tuple(children)
        self.weights = tuple(weights)

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        out = h
        for child, w in zip(self.children, self.weights):
            d = child.delta(h, inp, slot, host)
            if d is not None:
                out = out + (d if w == 1.0 else d * w)
        return out


class FuseNode(Node):
    """AdapterFusion: the children's outputs ``o_i`` (``h`` where a child is absent) are fused by
    the fusion module ``name`` of this host (see ``FusionModule.fuse``)."""

    def __init__(self, children: Sequence[Node], name: str) -> None:
        self.children = tuple(children)
        self.name = name

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        fusion = cast("FusionModule | None", slot.adapter(self.name))
        if fusion is None:
            return h
        outputs = [child.run(h, inp, slot, host) for child in self.children]
        return fusion.fuse(h, outputs)


def _unit(n_rows: int, total: int, block: str) -> int:
    """Rows per example: a host sees ``k * total`` rows (``k`` > 1 when generate expands the batch
    with repeat_interleave, or a model flattens batch and sequence)."""
    if n_rows % total:
        raise CompositionError(f"{block} covers {total} examples but a host sees a batch of {n_rows} "
                         "rows, which is not a multiple of it")
    return n_rows // total


class BatchSplitNode(Node):
    """Contiguous row slices ``sizes`` (in examples), child i on slice i; Parallel uses it with
    one example per replica unit."""

    def __init__(self, children: Sequence[Node], sizes: Sequence[int], block: str) -> None:
        self.children = tuple(children)
        self.sizes = tuple(sizes)
        self.block = block

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        k = _unit(h.shape[0], sum(self.sizes), self.block)
        parts, start = [], 0
        for child, size in zip(self.children, self.sizes):
            rows = slice(start, start + size * k)
            parts.append(child.run(h[rows], inp.rows(rows), slot, host))
            start += size * k
        return torch.cat(parts, 0)


class SplitNode(Node):
    """Positions ``< index`` of dim 1 run ``a``, the others ``b``."""

    def __init__(self, a: Node, b: Node, index: int) -> None:
        self.a, self.b, self.index = a, b, index

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        if h.dim() != 3:
            raise CompositionError(f"Split needs (batch, seq, features) host outputs; "
                             f"{type(host).__name__} gives shape {tuple(h.shape)}")
        s = min(self.index, h.shape[1])
        first, rest = slice(0, s), slice(s, None)
        parts = []
        if s > 0:
            parts.append(self.a.run(h[:, first], inp.positions(first), slot, host))
        if s < h.shape[1]:
            parts.append(self.b.run(h[:, rest], inp.positions(rest), slot, host))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)
