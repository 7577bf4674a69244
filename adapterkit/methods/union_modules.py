"""The modules a method union (``methods/union.py``) puts at its hosts: members sharing a host,
UniPELT's gates around a member, and the gated prefix with its per-layer gates.

Gates follow Mao et al., 2022, "UniPELT: A Unified Framework for Parameter-Efficient Language
Model Tuning" (arXiv:2110.07577): ``g = sigmoid(W_g u + b_g)`` with ``W_g``: (1, features) read
from the gated submodule's input ``u``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ..core.base import AdapterModule, MethodKind
from ..errors import AdapterError
from .inputs import InputAdapterModule, cache_is_empty, get_cache, incoming_cache


class UnionModule(AdapterModule):
    """Several members' modules at one host: ``delta = sum_i delta_i(h, x)``, every member reading
    the host's own output ``h``: (..., out) and input ``x`` (unlike a Stack, where a later residual
    adapter reads the earlier ones' output). Mergeable when every part is a weight delta: the
    weight and bias deltas add, and merging keeps their sum when a part reads the base weight."""

    def __init__(self, parts: Sequence[AdapterModule]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        weight = all(p.kind is MethodKind.WEIGHT_DELTA for p in parts)
        self.kind = MethodKind.WEIGHT_DELTA if weight else MethodKind.RESIDUAL
        self.delta_reads_base = any(p.delta_reads_base for p in parts)

    def members(self) -> Sequence[AdapterModule]:
        """``parts``, typed as the adapter modules it holds."""
        return cast("Sequence[AdapterModule]", self.parts)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        parts = self.members()
        total = parts[0].delta(h, x, base)
        for part in parts[1:]:
            total = total + part.delta(h, x, base)
        return total

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        parts = self.members()
        total = parts[0].delta_weight(base)
        for part in parts[1:]:
            total = total + part.delta_weight(base)
        return total

    def delta_bias(self, base: nn.Module) -> torch.Tensor | None:
        biases = [b for p in self.members() if (b := p.delta_bias(base)) is not None]
        return sum(biases[1:], biases[0]) if biases else None

    def attached(self, host: nn.Module) -> None:
        for part in self.members():
            part.attached(host)

    def detached(self, host: nn.Module) -> None:
        for part in reversed(self.members()):
            part.detached(host)


class GatedModule(AdapterModule):
    """UniPELT's gate around one member module: ``delta = g * inner.delta(h, x)`` with
    ``g = sigmoid(gate(u))``: (..., 1) per position, ``gate``: Linear(features, 1), ``u`` the
    member's input: the host output ``h`` for a series residual adapter (the adapter gate reads
    the FFN output), else ``x``, the host's input (LoRA's gate reads the attention input) or the
    tapped sublayer input of a parallel adapter. A gated delta is not a weight delta: gated
    members cannot be merged."""

    kind = MethodKind.RESIDUAL

    def __init__(self, inner: AdapterModule, features: int, reads_output: bool,
                 like: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.gate = nn.Linear(features, 1, device=like.device, dtype=like.dtype)
        self.reads_output = reads_output

    def gate_value(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``g``: (..., 1), from ``h`` or ``x``: (..., features)."""
        u = h if self.reads_output else x
        return torch.sigmoid(self.gate(u.to(self.gate.weight.dtype)))

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return (self.inner.delta(h, x, base) * self.gate_value(h, x)).to(h.dtype)

    def attached(self, host: nn.Module) -> None:
        self.inner.attached(host)

    def detached(self, host: nn.Module) -> None:
        self.inner.detached(host)


class _Pending:
    """The cache a gated prefix has just filled, and the layers whose prefix is gated already."""

    __slots__ = ("cache", "done")

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.done: set[int] = set()


class GatedPrefix(InputAdapterModule):
    """A prefix-tuning module (``inner``, see ``methods/prefix.py``) whose per-layer prefixes the
    :class:`PrefixGate` modules scale. ``prepare`` runs the inner module's and, on a forward that
    fills a new cache, remembers that cache until every layer's gate has scaled its prefix."""

    kind = MethodKind.PREFIX

    def __init__(self, inner: InputAdapterModule, layers: int) -> None:
        super().__init__()
        self.inner = inner
        self.num_tokens = inner.num_tokens
        self.layers = layers
        self.pending: _Pending | None = None

    def prepare(self, model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        fresh = cache_is_empty(incoming_cache(kwargs))
        kwargs = self.inner.prepare(model, kwargs)
        self.pending = _Pending(get_cache(kwargs)) if fresh else None
        return kwargs

    def attached(self, host: nn.Module) -> None:
        self.inner.attached(host)

    def detached(self, host: nn.Module) -> None:
        self.inner.detached(host)

    def gated(self, layer: int) -> None:
        """Layer ``layer``'s prefix is scaled; the cache is let go once every layer's is."""
        pending = self.pending
        if pending is not None:
            pending.done.add(layer)
            if len(pending.done) >= self.layers:
                self.pending = None


class PrefixGate(AdapterModule):
    """UniPELT's prefix gate of one layer, at the layer's first attention input projection
    (``attn.q``), which runs before attention reads its key/value cache.

    ``gate``: Linear(features, 1). On a forward where the :class:`GatedPrefix` ``source`` has
    just filled the cache, ``g = sigmoid(gate(x[:, 0]))``: (B, 1) from the attention input
    ``x``: (B, S, features) at the first position, and the layer's cached prefix keys and values,
    each (B, K, P, d), become ``g * P_K`` and ``g * P_V``, as UniPELT's ``P'_K = G_P P_K``,
    ``P'_V = G_P P_V``. Its host output is unchanged (the delta is zero).
    """

    kind = MethodKind.RESIDUAL
    #: the GatedPrefix whose prefixes this gate scales (set by the union's build)
    source: GatedPrefix | None

    def __init__(self, features: int, layer: int, like: torch.Tensor) -> None:
        super().__init__()
        self.gate = nn.Linear(features, 1, device=like.device, dtype=like.dtype)
        self.layer = layer
        object.__setattr__(self, "source", None)  # the GatedPrefix: not a submodule of this one

    def scale_prefix(self, x: torch.Tensor) -> None:
        source = self.source
        pending = source.pending if source is not None else None
        if source is None or pending is None or self.layer in pending.done:
            return
        layers = getattr(pending.cache, "layers", None)
        entry = layers[self.layer] if layers is not None and self.layer < len(layers) else None
        keys = getattr(entry, "keys", None)
        if entry is None or not isinstance(keys, torch.Tensor) or keys.shape[-2] != source.num_tokens:
            raise AdapterError(
                f"the gated prefix of layer {self.layer} is not in the key/value cache as "
                f"(batch, heads, {source.num_tokens}, head_dim) tensors; found {type(entry).__name__}")
        g = torch.sigmoid(self.gate(x[:, 0].to(self.gate.weight.dtype)))  # (B, 1)
        g = g.to(keys.dtype)[:, :, None, None]  # (B, 1, 1, 1)
        entry.keys = keys * g
        entry.values = entry.values * g
        source.gated(self.layer)

    def apply_delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        self.scale_prefix(x)
        return h

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        self.scale_prefix(x)
        return torch.zeros_like(h)
