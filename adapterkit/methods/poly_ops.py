"""MHR-z, MHR-mu and new tasks for Poly adapters (the helpers behind ``Poly.train_routing``,
``Poly.average`` and ``Poly.add_tasks``). They take the kit as an argument, typed loosely:
this package sits below it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError
from .lora import LoRA, LoRAModule
from .poly import Poly, PolyModule


def _poly(kit: Any, name: str) -> tuple[Any, dict[str, PolyModule]]:
    record = kit.record(name)
    if not isinstance(record.config, Poly):
        raise ConfigError(f"adapter {name!r} is a {record.spec.name} adapter, not Poly")
    return record, cast("dict[str, PolyModule]", record.modules)


def train_routing(kit: Any, name: str, tasks: Sequence[int] | None,
                  train_also: Sequence[str]) -> list[nn.Parameter]:
    record, mods = _poly(kit, name)
    n = record.config.n_tasks
    chosen = list(range(n)) if tasks is None else list(tasks)
    bad = [t for t in chosen if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n]
    if bad or not chosen:
        raise ConfigError(f"Poly.train_routing: tasks must be ids in 0..{n - 1}, got {tasks!r}")
    if record.config.n_skills == 1:
        raise ConfigError(f"Poly adapter {name!r} has one skill: it has no routing to train")
    heads = tuple(kit.finder().paths(tuple(train_also))) if train_also else ()
    for p in kit.model.parameters():
        p.requires_grad_(False)
    params = [m.routing[t] for m in mods.values() for t in chosen]
    for path in heads:
        params.extend(kit.model.get_submodule(path).parameters())
    for p in params:
        p.requires_grad_(True)
    record.heads = heads
    kit.activate(name)
    return params


def average(kit: Any, name: str, into: str) -> str:
    record, mods = _poly(kit, name)
    cfg = record.config
    kit.add(into, LoRA(r=cfg.r, alpha=cfg.alpha, targets=tuple(re.escape(h) for h in mods), init="zeros"))
    with torch.no_grad():
        for host, mod in mods.items():
            a = mod.lora_A.mean(1).reshape(-1, cfg.r)  # (in, r): splits along in
            b = mod.lora_B.mean(1).transpose(0, 1).reshape(cfg.r, -1)  # (r, out)
            lora = cast(LoRAModule, kit.record(into).modules[host])
            lora.lora_A.copy_(a.t())
            lora.lora_B.copy_(b.t())
    return into


def add_tasks(kit: Any, name: str, n: int) -> list[int]:
    record, mods = _poly(kit, name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"Poly.add_tasks: n must be a positive integer, got {n!r}")
    old = record.config.n_tasks
    for mod in mods.values():
        for _ in range(n if mod.n_skills > 1 else 0):
            mod.routing.append(mod.new_routing())
        mod.n_tasks = old + n
    record.config = replace(record.config, n_tasks=old + n)
    return list(range(old, old + n))
