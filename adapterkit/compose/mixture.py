"""The executor's node for ``Mixture``: per-token (or per-sequence) gate weights from the host's
router, applied to the experts' deltas, in one batched kernel when every expert is a plain LoRA.

Sequence routing pools the gate logits over positions (the gate is affine, so this equals
gating the mean input) with the attention mask, read by a top-level pre-hook
(:class:`SequenceState`). On encoders the pool is the masked mean over the whole sequence; on
causal decoders it is the running mean up to each position, carried across the calls of a KV
cache, so a cached ``generate()`` routes exactly as a forward over the whole sequence does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..core.mixing import balance_loss, gate_weights, lora_mix
from ..core.sites import is_linear_like
from ..methods.inputs import incoming_cache
from ..methods.lora import LoRAModule
from ..methods.router import RouterModule
from .blocks import CompositionError
from .nodes import Inputs, Node

if TYPE_CHECKING:
    from ..core.base import AdapterModule
    from .executor import AdapterSlot as Slot


class SequenceState:
    """What sequence routing needs beyond a host's input, written by the top-level pre-hook
    each forward (it sits in the plan's ``inputs``): the 2D attention mask (None: every
    position counts), how many positions the KV cache held before this call, and the running
    (sum, count) of each causal host's pooled logits, kept across the calls of one cache."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.past = 0
        self.sums: dict[tuple[int, nn.Module], tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        cache = incoming_cache(kwargs)
        length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        self.past = int(length)
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if self.past == 0:
            self.sums.clear()
        return kwargs

    def pool(self, logits: torch.Tensor, key: tuple[int, nn.Module], causal: bool) -> torch.Tensor:
        """``logits``: (N, T, n) pooled over positions: (N, 1, n), or (N, T, n) running means
        when ``causal``."""
        n, t = logits.shape[0], logits.shape[1]
        mask = self.mask
        if mask is not None and mask.shape[0] == n and mask.shape[1] >= self.past + t:
            m = mask[:, self.past:self.past + t].to(logits.dtype).unsqueeze(-1)
        elif mask is not None and mask.shape[0] != n:
            raise CompositionError(f"sequence routing: the attention mask has {mask.shape[0]} "
                                   f"rows but a host sees {n}")
        else:
            m = logits.new_ones(n, t, 1)
        if not causal:
            return (logits * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
        s, c = torch.cumsum(logits * m, 1), torch.cumsum(m, 1)
        prev = self.sums.get(key) if self.past else None
        if prev is not None and prev[0].shape[0] == n:
            s, c = s + prev[0].unsqueeze(1), c + prev[1].unsqueeze(1)
        self.sums[key] = (s[:, -1], c[:, -1])
        return s / c.clamp_min(1.0)


def sequence_state(kit: Any) -> SequenceState:
    """The kit's one :class:`SequenceState`, shared by its sequence-routed Mixtures."""
    state = kit.__dict__.get("_sequence_state")
    if state is None:
        state = kit.__dict__["_sequence_state"] = SequenceState()
    return cast(SequenceState, state)


def _batched(mods: Sequence[AdapterModule], x: Any, host: nn.Module) -> bool:
    """Whether the experts run as one stacked LoRA kernel: plain LoRA modules on a Linear or
    Conv1D host reading its input, without dropout in training (dropout draws per expert)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not is_linear_like(host):
        return False
    if not all(type(m) is LoRAModule and m.tap is None for m in mods):
        return False
    return not any(m.training and isinstance(cast(LoRAModule, m).drop, nn.Dropout) for m in mods)


class MixtureNode(Node):
    """``h + sum_i g_i delta_i`` with ``g`` from the router ``router`` of each host (see
    :class:`~adapterkit.compose.routed_blocks.Mixture`); ``state`` serves sequence routing,
    ``causal`` says whether the model is a causal decoder."""

    def __init__(self, router: str, mode: str, top_k: int | None, balance: str | None,
                 state: SequenceState | None, causal: bool) -> None:
        self.router, self.mode, self.top_k, self.balance = router, mode, top_k, balance
        self.state, self.causal = state, causal

    def weights(self, router: RouterModule, x: Any) -> torch.Tensor:
        """The experts' weights (..., n) at this host, for the host input ``x``."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise CompositionError("a Mixture router reads its host's floating-point input; "
                                   f"this host's input is {type(x).__name__}")
        logits = router.logits(x)
        if self.mode == "sequence":
            if logits.dim() != 3 or self.state is None:
                raise CompositionError("sequence routing needs (batch, seq, features) host "
                                       f"inputs; this host's input has shape {tuple(x.shape)}")
            logits = self.state.pool(logits, (id(self), router), self.causal)
        weights, probs = gate_weights(logits, self.top_k)
        router.last_aux = balance_loss(self.balance, probs, self.top_k) if self.balance else None
        return weights

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        router = cast("RouterModule | None", slot.adapter(self.router))
        if router is None:
            return h
        mods = [cast("AdapterModule", slot.adapter(n)) for n in router.experts]
        w = self.weights(router, inp.x)
        if len(mods) == 1:  # the weight is exactly 1: the expert as it runs alone
            return mods[0].apply_delta(h, inp.of(mods[0]), host)
        if _batched(mods, inp.x, host):
            return h + lora_mix(mods, w, inp.x, slot.route_cache).to(h.dtype)
        return h + mixed_deltas(mods, w, h, inp, host)


def mixed_deltas(mods: Sequence[AdapterModule], w: torch.Tensor, h: torch.Tensor, inp: Inputs,
                 host: nn.Module) -> torch.Tensor:
    """``sum_i w[..., i] * delta_i``: one ``delta`` call per expert (the general path)."""
    out = torch.zeros_like(h)
    for i, mod in enumerate(mods):
        out = out + w[..., i:i + 1].to(h.dtype) * mod.delta(h, inp.of(mod), host)
    return out
