"""Folding weight-delta adapters into their hosts and taking them out again, and the tensor
arithmetic under it."""

from __future__ import annotations

import torch
from torch import nn

from . import hosts
from .base import AdapterModule
from .typed import bias_of, weight_of


def fold(host: nn.Module, module: AdapterModule) -> float | None:
    """Add the module's weight (and bias) delta to its host; for a quantized host, return the
    rounding error of the requantized weight (see ``hosts.add_quantized``)."""
    dw, db = module.delta_weight(host), module.delta_bias(host)
    error = None
    if hosts.is_quantized(host):
        error = hosts.add_quantized(host, dw, id(module), sign=1.0)
    else:
        add_weight_delta(weight_of(host), dw, sign=1.0)
    if db is not None:
        add_weight_delta(_bias(host), db, sign=1.0)
    # a delta that reads the base weight cannot be recomputed from the merged one
    module.merge_stash = (dw, db) if module.delta_reads_base else None
    module.merged = True
    return error


def unfold(host: nn.Module, module: AdapterModule) -> None:
    """Take out what :func:`fold` added."""
    if module.merge_stash is not None:
        dw, db = module.merge_stash
    else:
        dw, db = module.delta_weight(host), module.delta_bias(host)
    if hosts.is_quantized(host):
        hosts.add_quantized(host, dw, id(module), sign=-1.0)
    else:
        weight = weight_of(host)
        add_weight_delta(weight, dw.to(weight.device), sign=-1.0)
    if db is not None:
        bias = _bias(host)
        add_weight_delta(bias, db.to(bias.device), sign=-1.0)
    module.merge_stash = None
    module.merged = False


def _bias(host: nn.Module) -> torch.Tensor:
    """The bias a bias delta goes into (a method gives one only for a host that has a bias)."""
    bias = bias_of(host)
    assert bias is not None, "a bias delta for a host without a bias"
    return bias


def tied_hosts(model: nn.Module, hosts: list[str]) -> dict[str, list[str]]:
    """For each host whose weight another module also holds, the paths of those modules."""
    owners: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        w = module._parameters.get("weight")
        if w is not None:
            owners.setdefault(id(w), []).append(path)
    tied = {h: [p for p in owners[id(model.get_submodule(h).weight)] if p != h] for h in hosts}
    return {h: others for h, others in tied.items() if others}


def add_weight_delta(weight: torch.Tensor, delta: torch.Tensor, sign: float = 1.0) -> None:
    """``weight += sign * delta`` in place, in the weight's dtype; shapes must agree."""
    if weight.shape != delta.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} != weight shape {tuple(weight.shape)}")
    weight.data.add_(delta.to(weight.dtype), alpha=sign)


def merged_weight(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """A new tensor ``weight + delta`` (pure)."""
    return weight + delta.to(weight.dtype)
