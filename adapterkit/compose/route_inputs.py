"""``Route`` over input-level adapters (prompt and prefix tuning): each row of one batch gets its
own adapter's prompt or prefix, and equals that example run alone with its adapter (or with none).

A route's rows hold P slots in front of their tokens for each input kind in the route, P the
largest ``num_tokens`` among the route's adapters of that kind. A row whose adapter has p tokens
fills the last p slots and masks the first ``P - p`` out (``attention_mask`` 0); a row without an
adapter of that kind masks all P. Masked slots get attention weight exactly 0, so a row's tokens
see what they would see alone, and its ``position_ids`` are those the row gets alone:

- prefix: the slots are key/value cache entries (zeros where masked); token positions are
  ``p + position`` (alone, input positions start after the prefix, as in PEFT);
- prompt on a decoder: the slots are ``inputs_embeds`` rows in front of the tokens (left
  padding where masked); prompt position ``j`` is ``j``, tokens ``p + position``; every row's
  tokens end at the last position, so next-token logits align across rows;
- prompt on an encoder (bert): the row's p prompt tokens, then its tokens, then the ``P - p``
  masked slots (a per-row roll of the decoder layout), so position 0 is the row's first prompt
  token, or ``[CLS]`` for a row without a prompt, which is what the pooler reads alone.

``position`` is the given ``position_ids``, or ``arange`` from the tokens cached before (the
model's own default for llama, gpt2 and bert). Prompts and prefixes are stacked once into
(K + 1, P, width) tables (zero-padded in front, entry K zero; cached while their parameters are
unchanged, see :class:`~adapterkit.core.stack_cache.StackCache`) and indexed per row, once per
forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.base import MethodKind
from ..core.stack_cache import StackCache, plain
from ..core.typed import input_embeddings
from ..errors import AdapterError
from ..methods.inputs import (
    InputAdapterModule,
    batch_of,
    cache_is_empty,
    check_mask,
    incoming_cache,
    pad_front,
    set_cache,
)
from ..methods.prefix import fill_cache
from .blocks import BASE, Block, Composition, CompositionError, Route, Stack, walk
from .nodes import _unit

if TYPE_CHECKING:
    from ..kit import AdapterKit

#: families whose models compute positions as ``arange`` after the cached tokens, which routed
#: rows reproduce with explicit ``position_ids``; roberta-like models number positions from the
#: padding token instead
FAMILIES = ("bert", "gpt2", "llama")
ENCODERS = ("bert",)


class _Kind:
    """The adapters of one input kind in a route: ``modules`` (K), each example's entry of the
    (K + 1)-entry tables (``rows``: the module index, ``-1`` for none, stored as K) and the row
    tables built from them."""

    def __init__(self, modules: Sequence[InputAdapterModule], rows: Sequence[int]) -> None:
        self.modules = list(modules)
        self.slots = max(m.num_tokens for m in modules)
        self.rows = plain(lambda: torch.tensor(
            [len(modules) if r < 0 else r for r in rows], dtype=torch.long))
        self.lengths = plain(lambda: torch.tensor(
            [m.num_tokens for m in modules] + [0], dtype=torch.long))
        self.cache = StackCache(size=4)
        self._expanded: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def per_row(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(table index per row (N,), ``keep``: (N, P) bool, True on the row's own slots)."""
        key = (n, device)
        hit = self._expanded.get(key)
        if hit is None:
            def build() -> tuple[torch.Tensor, torch.Tensor]:
                k = _unit(n, self.rows.shape[0], "Route")
                idx = self.rows.to(device).repeat_interleave(k)
                length = self.lengths.to(device).index_select(0, idx)
                keep = torch.arange(self.slots, device=device) >= (self.slots - length)[:, None]
                return idx, keep
            hit = self._expanded[key] = plain(build)
        return hit

    def table(self, idx: torch.Tensor) -> torch.Tensor:
        """Row i's tokens right-aligned in P slots, zeros in front: (N, P, width)."""
        def stack() -> torch.Tensor:
            tables = [m.table() for m in self.modules]
            padded = [F.pad(t, (0, 0, self.slots - t.shape[0], 0)) for t in tables]
            return torch.stack([*padded, torch.zeros_like(padded[0])])  # (K+1, P, width)

        stacked, _ = self.cache.stacks("input-table", self.modules, stack)
        return stacked.index_select(0, idx)


class RoutedInputs:
    """The top-level ``prepare`` of a Route whose rows use prompt or prefix adapters (see the
    module docstring); the executor's input pre-hook runs it as it runs a single adapter's."""

    def __init__(self, per_example: Sequence[InputAdapterModule | None], causal: bool) -> None:
        self.causal = causal
        self.prompt = _kind_of(per_example, MethodKind.PROMPT)
        self.prefix = _kind_of(per_example, MethodKind.PREFIX)
        self.slots = sum(k.slots for k in (self.prompt, self.prefix) if k is not None)

    def prepare(self, model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        past = incoming_cache(kwargs)
        fresh = cache_is_empty(past)
        tokens = kwargs.get("input_ids")
        tokens = tokens if isinstance(tokens, torch.Tensor) else kwargs["inputs_embeds"]
        n, s, device = batch_of(kwargs), tokens.shape[1], tokens.device
        before = 0 if fresh else int(past.get_seq_length()) - self.slots  # tokens cached before
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = torch.arange(before, before + s, device=device).expand(n, s)
        if kwargs.get("attention_mask") is None:
            kwargs["attention_mask"] = torch.ones(n, before + s, dtype=torch.long, device=device)
        check_mask(kwargs["attention_mask"])
        if self.prompt is not None:
            kwargs = self._prompt(model, kwargs, fresh, n, s, device)
        if self.prefix is not None:
            idx, keep = self.prefix.per_row(n, device)
            if fresh:
                set_cache(model, kwargs, fill_cache(model, past, self.prefix.table(idx)))
            kwargs = _shift(kwargs, keep)
        return kwargs

    def _prompt(self, model: nn.Module, kwargs: dict[str, Any], fresh: bool, n: int, s: int,
                device: torch.device) -> dict[str, Any]:
        kind = self.prompt
        assert kind is not None
        idx, keep = kind.per_row(n, device)
        if not fresh:
            if not self.causal:
                raise AdapterError("routed prompt tuning on an encoder runs full-sequence forwards "
                                   "only (no key/value cache)")
            return _shift(kwargs, keep)
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = input_embeddings(model)(ids)
        p = keep.shape[1]
        kwargs["inputs_embeds"] = torch.cat([kind.table(idx).to(embeds.dtype), embeds], 1)
        head = (torch.arange(p, device=device) - (~keep).sum(1, keepdim=True)).clamp(min=0)
        kwargs = _shift(kwargs, keep)
        pos = kwargs["position_ids"]
        kwargs["position_ids"] = torch.cat([head.to(pos.dtype), pos], 1)
        cached = kwargs.get("cache_position")
        if cached is not None:  # the prompt slots' cache indices come first
            kwargs["cache_position"] = torch.cat([torch.arange(p, device=device).to(cached), cached])
        kwargs = pad_front(kwargs, p, s)
        if not self.causal:  # roll row i left by its masked slots: prompt, tokens, masked slots
            order = (torch.arange(p + s, device=device) + (~keep).sum(1, keepdim=True)) % (p + s)
            for key in ("inputs_embeds", "attention_mask", "position_ids", "token_type_ids",
                        "labels"):
                value = kwargs.get(key)
                if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == p + s:
                    kwargs[key] = _take(value, order)
        return kwargs


def _kind_of(per_example: Sequence[InputAdapterModule | None], kind: MethodKind) -> _Kind | None:
    modules: list[InputAdapterModule] = []
    rows = []
    for mod in per_example:
        if mod is None or mod.kind is not kind:
            rows.append(-1)
            continue
        if mod not in modules:
            modules.append(mod)
        rows.append(modules.index(mod))
    return _Kind(modules, rows) if modules else None


def _shift(kwargs: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """``attention_mask`` gets the slots ``keep``: (N, P) in front; ``position_ids`` move on by
    each row's own slot count, a given ``cache_position`` (the KV-cache indices transformers
    before 5.4 reads) by all P slots."""
    mask = kwargs["attention_mask"]
    kwargs["attention_mask"] = torch.cat([keep.to(mask.dtype), mask], 1)
    pos = kwargs["position_ids"]
    kwargs["position_ids"] = pos + keep.sum(1, keepdim=True).to(pos.dtype)
    if kwargs.get("cache_position") is not None:
        kwargs["cache_position"] = kwargs["cache_position"] + keep.shape[1]
    return kwargs


def _take(value: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Row i of ``value``: (N, L, ...) reordered along dim 1 by ``order[i]``: (N, L)."""
    index = order.view(*order.shape, *([1] * (value.dim() - 2))).expand_as(value)
    return torch.gather(value, 1, index)


# -- compile time ----------------------------------------------------------------------------
def _entry_input(entry: Composition, found: dict[str, tuple[InputAdapterModule, ...]]) -> str | None:
    """The input-level adapter of one route entry: the entry itself or one direct member of a
    Stack entry; anywhere else it is refused."""
    if isinstance(entry, str):
        return entry if entry in found else None
    if isinstance(entry, Stack):
        direct = [c for c in entry.children if isinstance(c, str) and c in found]
        rest = [c for c in entry.children if isinstance(c, Block)]
    else:
        direct, rest = [], [entry]
    nested = [n for c in rest for n in walk(c) if isinstance(n, str) and n in found]
    if nested:
        raise CompositionError(
            f"prompt/prefix adapters {nested} sit inside {entry!r}: in a Route, a prompt or "
            "prefix adapter must be a row's entry itself or a direct member of a Stack entry")
    if len(direct) > 1:
        raise CompositionError(
            f"the Route entry {entry!r} holds several prompt/prefix adapters {direct}; a row "
            "runs at most one")
    return direct[0] if direct else None


def route_inputs(kit: AdapterKit, route: Route, found: dict[str, tuple[InputAdapterModule, ...]]
                 ) -> tuple[Any, ...]:
    """What the input pre-hook runs for ``route`` (``found``: its input-level adapters and their
    modules): the adapter's own modules when every row runs the same one, else a
    :class:`RoutedInputs`."""
    per_example: list[InputAdapterModule | None] = []
    for entry in route.children:
        name = None if entry == BASE else _entry_input(entry, found)
        mods: tuple[InputAdapterModule | None, ...] = found[name] if name is not None else (None,)
        if len(mods) != 1:
            raise CompositionError(f"adapter {name!r} has {len(mods)} input-level modules; "
                                   "per-example routing runs one per row")
        per_example.append(mods[0])
    if per_example[0] is not None and all(m is per_example[0] for m in per_example):
        return (per_example[0],)
    family = kit.layout.family if kit.layout is not None else None
    if family not in FAMILIES:
        raise CompositionError(
            f"per-example routing of prompt/prefix adapters supports the families {list(FAMILIES)} "
            f"(this model's layout: {family!r}); other models number positions differently")
    causal = family not in ENCODERS or bool(getattr(kit.model.config, "is_decoder", False))
    return (RoutedInputs(per_example, causal),)
