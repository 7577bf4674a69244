"""Typed access to module attributes whose stubs are loose, and tensor-factory keywords.

torch types ``nn.Module.__getattr__`` as returning ``Tensor | Module``, so ``host.weight`` on a
module typed ``nn.Module`` is not known to be a tensor. These helpers read such attributes
unchanged and give them their real type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict, cast

import torch
from torch import nn


class Factory(TypedDict):
    """The ``device`` and ``dtype`` keywords of a tensor factory or module constructor."""

    device: torch.device
    dtype: torch.dtype


def factory(like: torch.Tensor) -> Factory:
    """Keywords that make a new tensor or module on ``like``'s device with its dtype."""
    return {"device": like.device, "dtype": like.dtype}


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight`` (a host's parameter) as a tensor."""
    return cast(torch.Tensor, module.weight)


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """``module.bias``: a tensor, or None for a module built without one."""
    return cast("torch.Tensor | None", module.bias)


def tensor_attr(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` of ``module``."""
    return cast(torch.Tensor, getattr(module, name))


def input_embeddings(model: nn.Module) -> nn.Module:
    """A transformers model's input embedding module (``model.get_input_embeddings()``)."""
    get = cast("Callable[[], nn.Module]", model.get_input_embeddings)
    return get()


def model_config(model: nn.Module) -> Any:
    """A transformers model's ``config``."""
    return model.config


def text_config(model: nn.Module) -> Any:
    """A transformers model's config, or the text part of a multimodal one."""
    cfg = model_config(model)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
