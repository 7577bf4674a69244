"""Shared test utilities."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adapterkit as ak


def perturb(kit: ak.AdapterKit, name: str, std: float = 0.2, seed: int = 7) -> None:
    """Give every parameter of adapter ``name`` random values, so it is far from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in kit.parameters(name):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def peft_pair(family: str, config: Any, peft_config: Any) -> tuple[nn.Module, ak.AdapterKit, Any]:
    """Two fresh copies of a tiny model: one with adapter ``a`` (``config``) added and active
    here, one wrapped by PEFT with ``peft_config``."""
    import peft

    from .models import build

    ours = build(family)
    kit = ak.AdapterKit(ours)
    kit.add("a", config)
    kit.activate("a")
    return ours, kit, peft.get_peft_model(build(family), peft_config)


def set_config_field(directory: Path, field: str, value: Any) -> None:
    """Rewrite one top-level field of the ``adapter_config.json`` in ``directory``."""
    path = directory / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))


def kit_snapshot(model: nn.Module, kit: ak.AdapterKit) -> tuple[Any, ...]:
    """Adapter names, state-dict keys and hook counts: what a failed call must leave as it was."""
    return list(kit.names), set(model.state_dict()), hook_counts(model)


def hook_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


def module_types(model: nn.Module) -> dict[str, type]:
    return {n: type(m) for n, m in model.named_modules()}


def peft_cache_issue() -> str | None:
    """Why PEFT cannot be the reference for prefix tuning on BERT and for prompt/prefix tuning
    in generate() with the installed versions, or None. PEFT up to 0.21.2 hands its KV cache
    over as ``past_key_values``; transformers 5.24 names that argument ``cache``: PEFT then
    refuses prefix tuning on BERT ("does not support past key values") and, in generate(), its
    prefixes are dropped in favour of generate's own cache (its prompt tuning also decodes
    differently from its own cache-free greedy decoding). Our side of these cases is checked
    against cache-free greedy decoding in test_prompt_prefix.py either way."""
    import inspect

    import peft
    import transformers
    from packaging.version import Version

    renamed = "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
    if renamed and Version(peft.__version__) <= Version("0.21.2"):
        why = (f"peft {peft.__version__} passes past_key_values, which transformers "
               f"{transformers.__version__} renamed to cache: PEFT is no reference here")
        if os.environ.get("PEFT_REFERENCE_REQUIRED"):  # make test-peft-compat: never skip
            raise AssertionError(why)
        return why
    return None
