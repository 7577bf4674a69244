"""Arrow routing (Ostapenko et al. 2024, "Towards Modular LLMs by Building and Reusing a Library
of LoRAs", arXiv:2405.11157): zero-shot, per-token routing among LoRA experts from their own
weights.

Each expert's prototype at a host is the top right singular vector ``v`` of its weight delta
``B A`` (:func:`~adapterkit.core.spectral.top_right_singular`). It is computed once per module
and kept in a registry while the module's parameters are unchanged (same ``_version`` and
storage); prototypes stored beside an adapter (``arrow_prototypes.safetensors``, as the hub
keeps them) are registered when the adapter is loaded and used instead. A token ``x`` scores
``|<x, v_i>|`` against every expert, and the weights are the softmax at ``temperature`` over
the ``top_k`` highest scores.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.base import AdapterModule, MethodKind
from ..core.checkpoint import _atomic_write, read_safetensors, refuse_non_finite
from ..core.mixing import lora_mix, topk_softmax
from ..core.sites import features_of, is_conv1d, is_linear_like
from ..core.spectral import top_right_singular
from ..errors import AdapterError, LoadError
from ..methods.lora import LoRAModule
from .blocks import CompositionError
from .mixture import _batched, mixed_deltas
from .nodes import Inputs, Node

if TYPE_CHECKING:
    from ..kit import AdapterKit
    from .executor import AdapterSlot as Slot

#: the file beside an adapter's checkpoint that holds its prototypes, one (in,) vector per site
PROTOTYPES_FILE = "arrow_prototypes.safetensors"

_Stamp = tuple[tuple[int, int], ...]
_REGISTRY: weakref.WeakKeyDictionary[nn.Module, tuple[_Stamp, torch.Tensor]] = \
    weakref.WeakKeyDictionary()


def _stamp(module: nn.Module) -> _Stamp:
    return tuple((p._version, p.data_ptr()) for p in module.parameters())


def module_prototype(module: AdapterModule, host: nn.Module) -> torch.Tensor:
    """The prototype (in,) float64 of one expert module at ``host``: from the LoRA factors
    without forming ``B A``, or from ``delta_weight`` for other weight-delta methods."""
    hit = _REGISTRY.get(module)
    stamp = _stamp(module)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    if not is_linear_like(host):
        raise CompositionError(f"Arrow needs Linear or Conv1D hosts, got {type(host).__name__}")
    if type(module) is LoRAModule:
        lora = cast(LoRAModule, module)
        v = top_right_singular(lora.lora_A, lora.lora_B)[1]
    else:
        dw = module.delta_weight(host).detach()
        v = top_right_singular(dw.t() if is_conv1d(host) else dw)[1]
    _REGISTRY[module] = (stamp, v)
    return v


def _expert_modules(kit: AdapterKit, name: str) -> dict[str, AdapterModule]:
    record = kit.record(name)
    if record.spec.kind is not MethodKind.WEIGHT_DELTA:
        raise CompositionError(f"Arrow experts are weight-delta adapters (LoRA, DoRA, ...); "
                               f"{name!r} is a {record.spec.name} ({record.spec.kind.value}) adapter")
    return record.modules


def adapter_prototypes(kit: AdapterKit, name: str) -> dict[str, torch.Tensor]:
    """``{site path: prototype (in,)}`` of adapter ``name`` (see :func:`module_prototype`)."""
    mods = _expert_modules(kit, name)
    return {host: module_prototype(mod, kit.model.get_submodule(host)) for host, mod in mods.items()}


def store_prototypes(kit: AdapterKit, name: str, prototypes: dict[str, torch.Tensor]) -> None:
    """Register precomputed prototypes of adapter ``name`` (``{site path: (in,) vector}``), for
    its current weights; each is checked (a site of the adapter, shape, finite, non-zero) and
    normalised. Nothing is registered if one is refused."""
    mods = _expert_modules(kit, name)
    ready = {}
    for host, v in prototypes.items():
        if host not in mods:
            raise AdapterError(f"prototype for {host!r}: adapter {name!r} has no site there; "
                               f"its sites: {sorted(mods)[:6]}")
        n_in = features_of(kit.model.get_submodule(host))[0]
        if v.shape != (n_in,) or not bool(torch.isfinite(v).all()) or float(v.norm()) == 0.0:
            raise AdapterError(f"prototype for {host!r} must be a finite, non-zero vector of "
                               f"shape ({n_in},), got shape {tuple(v.shape)}")
        ready[mods[host]] = v.detach().to(torch.float64) / v.detach().double().norm()
    for mod, v in ready.items():
        _REGISTRY[mod] = (_stamp(mod), v)


def save_prototypes(kit: AdapterKit, name: str, directory: str | os.PathLike) -> Path:
    """Write adapter ``name``'s prototypes to ``directory/arrow_prototypes.safetensors``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: v.to(torch.float32).contiguous() for k, v in adapter_prototypes(kit, name).items()}
    _atomic_write(out / PROTOTYPES_FILE, lambda p: save_file(flat, p))
    return out / PROTOTYPES_FILE


def load_prototypes(kit: AdapterKit, name: str, directory: str | os.PathLike) -> bool:
    """Register the prototypes stored in ``directory`` for adapter ``name``, when the file is
    there; returns whether it was. A malformed file raises LoadError naming it."""
    path = Path(directory) / PROTOTYPES_FILE
    if not path.is_file():
        return False
    tensors = read_safetensors(path)
    refuse_non_finite(tensors, path)
    try:
        store_prototypes(kit, name, tensors)
    except AdapterError as exc:
        raise LoadError(f"{path}: {exc}") from None
    return True


class ArrowNode(Node):
    """``h + sum_i g_i delta_i`` with Arrow's weights over the ``experts`` present at a host."""

    def __init__(self, experts: tuple[str, ...], top_k: int | None, temperature: float) -> None:
        self.experts, self.top_k, self.temperature = experts, top_k, temperature

    def _prototypes(self, mods: list[AdapterModule], slot: Slot, host: nn.Module) -> torch.Tensor:
        """(n, in) in the host's dtype, stacked once per set of registered prototypes."""
        vs = [module_prototype(m, host) for m in mods]
        w = cast(torch.Tensor, host.weight)
        return slot.route_cache.derived("arrow-prototypes", vs,
                                        lambda: torch.stack(vs).to(w.device, w.dtype))

    def run(self, h: torch.Tensor, inp: Inputs, slot: Slot, host: nn.Module) -> torch.Tensor:
        mods = [m for n in self.experts if (m := slot.adapter(n)) is not None]
        if not mods:
            return h
        x = inp.x
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise CompositionError("Arrow scores its host's floating-point input; this host's "
                                   f"input is {type(x).__name__}")
        with torch.no_grad():
            protos = self._prototypes(mods, slot, host)  # (n, in)
        scores = torch.abs(x.to(protos.dtype) @ protos.t())  # (..., n)
        k = None if self.top_k is None else min(self.top_k, len(mods))
        w = topk_softmax(scores, k, self.temperature)
        if _batched(mods, x, host):
            return h + lora_mix(mods, w, x, slot.route_cache).to(h.dtype)
        return h + mixed_deltas(mods, w, h, inp, host)
