"""Prefix tuning: trainable key/value prefixes at every self-attention layer.

Li and Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"
(arXiv:2101.00190).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..core.base import MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder
from ..core.typed import input_embeddings, model_config, text_config, weight_of
from ..errors import ConfigError
from . import register
from .inputs import (
    InputAdapterModule,
    batch_of,
    cache_is_empty,
    grow,
    incoming_cache,
    input_site,
    set_cache,
)


@dataclass(frozen=True)
class PrefixTuning:
    """Config of a prefix-tuning adapter: ``num_tokens`` key/value positions in front of every
    self-attention layer. ``reparameterize=True`` trains the prefixes through an MLP of width
    ``hidden`` (the paper's reparameterisation, PEFT's ``prefix_projection``); ``kit.fold(name)``
    replaces the MLP by the prefixes it computes, after training."""

    num_tokens: int = 20
    reparameterize: bool = False
    hidden: int = 512

    def __post_init__(self) -> None:
        for field in ("num_tokens", "hidden"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"PrefixTuning.{field} must be a positive integer, got {v!r}")
        if not isinstance(self.reparameterize, bool):
            raise ConfigError(f"PrefixTuning.reparameterize must be a bool, got {self.reparameterize!r}")

    def folded(self) -> PrefixTuning:
        """The config of the same adapter after ``kit.fold``: the prefixes are the parameters."""
        return replace(self, reparameterize=False)


def kv_shape(model: nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of the model's self-attention caches."""
    cfg = text_config(model)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return int(cfg.num_hidden_layers), kv_heads, head_dim


def fill_cache(model: nn.Module, cache: Any, rows: torch.Tensor) -> Any:
    """``cache`` (a new ``DynamicCache`` when None) holding row i's prefix table ``rows[i]``
    ((N, P, 2 * L * K * d), the layout of ``PrefixModule.table``) at every layer."""
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache(config=model_config(model))
    layers, kv_heads, head_dim = kv_shape(model)
    dtype = weight_of(input_embeddings(model)).dtype
    n, p = rows.shape[:2]
    t = rows.to(dtype).view(n, p, 2 * layers, kv_heads, head_dim)
    t = t.permute(2, 0, 3, 1, 4)  # (2L, N, K, P, d)
    for layer in range(layers):
        cache.update(t[2 * layer].contiguous(), t[2 * layer + 1].contiguous(), layer)
    return cache


class PrefixModule(InputAdapterModule):
    """Per-layer key and value prefixes as one table ``T``: (P, 2 * L * K * d), P = num_tokens,
    L layers, K key/value heads, d the head dim; PEFT's ``prompt_encoder.<name>.embedding.weight``
    with ``prefix_projection=False``, in its layout: ``T.view(P, 2L, K, d)`` holds layer l's
    keys at index ``2l`` and its values at ``2l + 1``.

    Plain: ``T`` is the parameter ``prefix``. Reparameterised (Li and Liang's MLP):
    ``embedding``: (P, K*d) and ``mlp`` = Linear(K*d, hidden) -> tanh -> Linear(hidden, 2*L*K*d),
    ``T = mlp(embedding)`` (PEFT's ``prefix_projection=True``); ``fold()`` keeps only ``T``.

    On a forward without cached tokens a ``DynamicCache`` (the one ``generate`` passes, or a new
    one) is filled with layer l's keys and values, each (B, K, P, d); attention then runs over
    P + S keys, and generation appends to that cache. ``attention_mask`` gets P leading ones on
    every forward and given ``position_ids`` move P on; positions the model computes itself count
    from the cache length, so input positions start at P, as in PEFT.
    """

    kind = MethodKind.PREFIX

    def __init__(self, model: nn.Module, num_tokens: int, reparameterize: bool,
                 hidden: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.layers, self.kv_heads, self.head_dim = kv_shape(model)
        w = weight_of(input_embeddings(model))
        kv = self.kv_heads * self.head_dim
        width = 2 * self.layers * kv
        if reparameterize:  # nn.Embedding and nn.Linear initialisation, as PEFT
            self.embedding = nn.Parameter(torch.randn(num_tokens, kv).to(w.device, w.dtype))
            self.mlp = nn.Sequential(nn.Linear(kv, hidden), nn.Tanh(), nn.Linear(hidden, width))
            self.mlp.to(w.device, w.dtype)
        else:
            self.prefix = nn.Parameter(torch.randn(num_tokens, width).to(w.device, w.dtype))

    @property
    def reparameterized(self) -> bool:
        return "mlp" in self._modules

    def table(self) -> torch.Tensor:
        """``T``: (P, 2 * L * K * d)."""
        return self.mlp(self.embedding) if self.reparameterized else self.prefix

    def fold(self) -> None:
        """Replace the reparameterisation by the prefixes it gives (a no-op when plain)."""
        if not self.reparameterized:
            return
        trainable = self.embedding.requires_grad
        with torch.no_grad():
            table = self.table().detach().clone()
        del self.mlp
        del self.embedding
        self.prefix = nn.Parameter(table, requires_grad=trainable)

    def fill(self, model: nn.Module, cache: Any, batch: int) -> Any:
        """``cache`` (a new ``DynamicCache`` when None) with every layer's prefix."""
        return fill_cache(model, cache, self.table()[None].expand(batch, -1, -1))

    def prepare(self, model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        past = incoming_cache(kwargs)
        if cache_is_empty(past):
            set_cache(model, kwargs, self.fill(model, past, batch_of(kwargs)))
        return grow(kwargs, self.num_tokens)


def _find_sites(config: PrefixTuning, finder: SiteFinder) -> list[Site]:
    return [input_site(finder, "PrefixTuning")]


def _build(config: PrefixTuning, site: Site, finder: SiteFinder) -> PrefixModule:
    return PrefixModule(finder.model, config.num_tokens, config.reparameterize, config.hidden)


register(MethodSpec(
    name="prefix", config_cls=PrefixTuning, kind=MethodKind.PREFIX, mergeable=False, routable=True,
    find_sites=_find_sites, build=_build, paper="Li and Liang 2021, arXiv:2101.00190",
    sites_used="the key/value cache of every self-attention layer (top-level pre-hook); "
               "bert, roberta, xlm-roberta, gpt2, llama families",
))
