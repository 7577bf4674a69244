"""Materialising, extending and per-task training of HyperAdapters (the helpers behind
``HyperAdapter.materialize``, ``add_tasks`` and ``train_task``). They take the kit as an
argument, typed loosely: this package sits below it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError
from .bottleneck import Bottleneck, BottleneckModule
from .hyper import HyperAdapter, HyperModule
from .lora import LoRA, LoRAModule


def _hyper(kit: Any, name: str) -> tuple[Any, dict[str, HyperModule]]:
    record = kit.record(name)
    if not isinstance(record.config, HyperAdapter):
        raise ConfigError(f"adapter {name!r} is a {record.spec.name} adapter, not a HyperAdapter")
    return record, cast("dict[str, HyperModule]", record.modules)


def _task(record: Any, task: object) -> int:
    n = record.config.n_tasks
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < n:
        raise ConfigError(f"task must be an id in 0..{n - 1}, got {task!r}")
    return task


def materialize(kit: Any, name: str, task: int, into: str) -> str:
    record, mods = _hyper(kit, name)
    cfg: HyperAdapter = record.config
    t = torch.tensor([_task(record, task)])
    hosts = tuple(re.escape(h) for h in mods)
    if cfg.adapter == "lora":
        kit.add(into, LoRA(r=cfg.r, alpha=cfg.alpha, targets=hosts, init="zeros"))
    else:
        kit.add(into, Bottleneck(reduction=cfg.reduction, targets=hosts))
    with torch.no_grad():
        for host, mod in mods.items():
            weights = [w[0] for w in mod.generate(t.to(mod.layer_embedding.device))]
            target = kit.record(into).modules[host]
            if cfg.adapter == "lora":
                lora = cast(LoRAModule, target)
                lora.lora_A.copy_(weights[0].t())
                lora.lora_B.copy_(weights[1].t())
            else:
                bn = cast(BottleneckModule, target)
                bn.down.weight.copy_(weights[0].t())
                bn.down.bias.copy_(weights[1])
                bn.up.weight.copy_(weights[2].t())
                bn.up.bias.copy_(weights[3])
    return into


def train_task(kit: Any, name: str, task: int, train_also: Sequence[str]) -> list[nn.Parameter]:
    record, mods = _hyper(kit, name)
    t = _task(record, task)
    heads = tuple(kit.finder().paths(tuple(train_also))) if train_also else ()
    for p in kit.model.parameters():
        p.requires_grad_(False)
    owner = next(iter(mods.values()))
    params = [owner.net.task_embeddings[t]]
    for path in heads:
        params.extend(kit.model.get_submodule(path).parameters())
    for p in params:
        p.requires_grad_(True)
    record.heads = heads
    kit.activate(name)
    return params


def add_tasks(kit: Any, name: str, n: int) -> list[int]:
    record, mods = _hyper(kit, name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"HyperAdapter.add_tasks: n must be a positive integer, got {n!r}")
    old = record.config.n_tasks
    net = next(iter(mods.values())).net
    for _ in range(n):
        net.task_embeddings.append(net.new_task(record.config.task_dim))
    for mod in mods.values():
        mod.n_tasks = old + n
    record.config = replace(record.config, n_tasks=old + n)
    return list(range(old, old + n))
