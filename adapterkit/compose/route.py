"""``Route``: each example of the batch runs its own adapter (or composition, or none).

At each host the distinct entries are grouped by adapter module class; each group runs as one
call of its class's ``route_deltas`` primitive (a batched kernel for LoRA, IA3 and bottleneck, a
masked loop otherwise), and composite entries (a Stack, Fuse, ...) run on their rows only. Rows
of different entries are disjoint, so the group deltas add exactly. The per-host grouping and
the per-row indices depend only on the route and the slot's contents, so they are built once per
host and reused by every forward of the route (every decoding step of ``generate()``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.stack_cache import plain
from .nodes import Inputs, Node, _unit

if TYPE_CHECKING:
    from .executor import AdapterSlot as Slot


class _Group:
    """The modules of one class at one host, and each row's index into them."""

    __slots__ = ("local", "map", "modules")

    def __init__(self, modules: list[AdapterModule], positions: list[int], n_entries: int) -> None:
        self.modules = tuple(modules)  # a tuple: the kernels' caches find it by identity
        table = [-1] * (n_entries + 1)  # entry index + 1 -> module index (0: the base)
        for j, i in enumerate(positions):
            table[i + 1] = j
        self.map = plain(lambda: torch.tensor(table))
        self.local: dict[tuple, tuple[torch.Tensor, str]] = {}

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, str]:
        """(module index per row, ``"none"``/``"whole"``/``"some"``: which rows run a module;
        ``"whole"``: every row runs module 0)."""
        key = (rows.shape[0], rows.device)
        hit = self.local.get(key)
        if hit is None:
            def build() -> tuple[torch.Tensor, str]:
                local = self.map.to(rows.device)[rows + 1]
                if bool((local < 0).all()):
                    return local, "none"
                whole = len(self.modules) == 1 and bool((local == 0).all())
                return local, "whole" if whole else "some"
            hit = self.local[key] = plain(build)
        return hit


class _HostRoute:
    __slots__ = ("composites", "groups", "members")

    def __init__(self, groups: list[_Group], composites: list[tuple[int, Node]]) -> None:
        self.groups = groups
        self.composites = composites
        self.members: dict[tuple, torch.Tensor] = {}


class RouteNode(Node):
    """``entries``: the distinct non-base entries (composition values), ``nodes`` the same
    compiled (an adapter name stays a name); ``row_group``: (B,) the entry index of each
    example, ``-1`` for ``__base__``. Per-host plans are kept on the node per slot (the kit
    reuses a compiled route while its adapters are unchanged), so a route activated again
    (every batch of a server, every step of a decoding loop) finds its plans, row indices and
    gathered weights built."""

    def __init__(self, entries: Sequence[Hashable], nodes: Sequence[str | Node],
                 row_group: Sequence[int], strategy: str | None = None) -> None:
        self.nodes = list(nodes)
        self.row_group = plain(lambda: torch.tensor(list(row_group), dtype=torch.long))
        self.strategy = strategy
        self._rows: dict[tuple, torch.Tensor] = {}
        self._hosts: dict[int, tuple[Slot, int, _HostRoute]] = {}

    def _expanded(self, n: int, device: torch.device) -> torch.Tensor:
        """The entry index of each of ``n`` rows (``k = n / B`` consecutive rows per example)."""
        key = (n, device)
        rows = self._rows.get(key)
        if rows is None:
            k = _unit(n, self.row_group.shape[0], "Route")
            rows = self._rows[key] = plain(
                lambda: self.row_group.to(device).repeat_interleave(k))
        return rows

    def _host(self, slot: Slot) -> _HostRoute:
        """The host's plan: kept on this node per slot while the slot's contents are unchanged
        (an identity and a counter, not a key over the route's entries)."""
        hit = self._hosts.get(id(slot))
        if hit is not None and hit[0] is slot and hit[1] == slot.version:
            return hit[2]
        plan = plain(lambda: self._build_host(slot))  # not in the slot's LRU: that keeps stacks
        self._hosts[id(slot)] = (slot, slot.version, plan)
        return plan

    def _build_host(self, slot: Slot) -> _HostRoute:
        """Each class's modules in the slot's order, whatever the order of the route's entries,
        so routes over the same adapters share their stacked weights."""
        by_class: dict[type[AdapterModule], list[tuple[int, AdapterModule, int]]] = {}
        composites: list[tuple[int, Node]] = []
        order = {name: j for j, name in enumerate(slot.keys())}
        for i, entry in enumerate(self.nodes):
            if isinstance(entry, Node):
                composites.append((i, entry))
                continue
            mod = slot.adapter(entry)
            if mod is not None:
                by_class.setdefault(type(mod), []).append((order[entry], mod, i))
        groups = []
        for members in by_class.values():
            members.sort(key=lambda t: t[0])
            groups.append(_Group([m for _, m, _ in members], [i for _, _, i in members],
                                 len(self.nodes)))
        return _HostRoute(groups, composites)

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        plan = self._host(slot)
        rows = self._expanded(h.shape[0], h.device)
        out = h
        for group in plan.groups:
            local, which = group.rows(rows)
            mods = group.modules
            if which == "whole":  # every row runs one adapter: run it as activate does
                return mods[0].apply_delta(h, inp.of(mods[0]), host)
            if which == "some":
                xs = [inp.x] * len(mods) if not slot.taps else [inp.of(m) for m in mods]
                out = out + type(mods[0]).route_deltas(
                    mods, local, h, xs, host, cache=slot.route_cache, strategy=self.strategy)
        for i, node in plan.composites:
            idx = self._members(plan, i, rows)
            if idx.numel():
                sub = node.run(h.index_select(0, idx), inp.rows(idx), slot, host)
                out = out.index_copy(0, idx, sub)
        return out

    @staticmethod
    def _members(plan: _HostRoute, i: int, rows: torch.Tensor) -> torch.Tensor:
        key = (i, rows.shape[0], rows.device)
        idx = plan.members.get(key)
        if idx is None:
            idx = plan.members[key] = plain(lambda: (rows == i).nonzero().squeeze(1))
        return idx

