"""Prompt tuning: trainable soft-prompt embeddings prepended to the input.

Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"
(arXiv:2104.08691).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import check_choice
from ..core.base import MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder
from ..core.typed import input_embeddings, weight_of
from ..errors import ConfigError
from . import register
from .inputs import (
    InputAdapterModule,
    batch_of,
    cache_is_empty,
    grow,
    incoming_cache,
    input_site,
    pad_front,
    prepend_positions,
)


@dataclass(frozen=True)
class PromptTuning:
    """Config of a prompt-tuning adapter: ``num_tokens`` soft tokens before the input.

    ``init="random"`` draws the prompt from N(0, 1) (PEFT's ``RANDOM``); ``init="vocab"`` copies
    the embeddings of ``num_tokens`` vocabulary entries drawn uniformly (PEFT's ``SAMPLE_VOCAB``).
    """

    num_tokens: int = 20
    init: str = "random"

    def __post_init__(self) -> None:
        n = self.num_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"PromptTuning.num_tokens must be a positive integer, got {n!r}")
        check_choice("PromptTuning", "init", self.init, ("random", "vocab"))


class PromptModule(InputAdapterModule):
    """Soft prompt ``prompt``: (num_tokens, hidden) = (P, D), PEFT's
    ``prompt_encoder.<name>.embedding.weight``.

    On a forward without cached tokens (a plain forward, or the first step of ``generate``) the
    token embeddings ``E = embed(input_ids)``: (B, S, D) (or the given ``inputs_embeds``) become
    ``[prompt; E]``: (B, P + S, D), passed as ``inputs_embeds``, exactly as PEFT does; so position
    embeddings count over prompt + input (on BERT the prompt comes before ``[CLS]`` and the
    pooler reads the first prompt token), and every sequence output has P more positions in
    front. ``attention_mask`` gets P leading ones, ``token_type_ids`` P leading zeros,
    ``position_ids`` become ``[0..P-1, position_ids + P]`` and token-level ``labels`` (B, S) get
    P leading ``-100``. On later decoding steps the prompt is in the KV cache: only the mask
    grows by P and ``position_ids`` move by P.
    """

    kind = MethodKind.PROMPT

    def __init__(self, embedding: nn.Module, num_tokens: int, init: str) -> None:
        super().__init__()
        w = weight_of(embedding)
        with torch.no_grad():
            if init == "vocab":
                ids = torch.randint(0, w.shape[0], (num_tokens,)).to(w.device)
                start = w.detach()[ids].clone()
            else:
                start = torch.randn(num_tokens, w.shape[1]).to(w.device, w.dtype)
        self.prompt = nn.Parameter(start)
        self.num_tokens = num_tokens

    def table(self) -> torch.Tensor:
        """The prompt: (P, D)."""
        return self.prompt

    def prepare(self, model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        n = self.num_tokens
        if not cache_is_empty(incoming_cache(kwargs)):
            return grow(kwargs, n)  # a decoding step: the prompt is in the cache
        b = batch_of(kwargs)
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = input_embeddings(model)(ids)
        s = embeds.shape[1]
        prompt = self.prompt.to(embeds.dtype)[None].expand(b, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], 1)
        given = {key: kwargs.pop(key, None) for key in ("position_ids", "cache_position")}
        kwargs = grow(kwargs, n)
        for key, pos in given.items():
            prepend_positions(kwargs, key, pos, n)
        kwargs = pad_front(kwargs, n, s)
        return kwargs


def _find_sites(config: PromptTuning, finder: SiteFinder) -> list[Site]:
    return [input_site(finder, "PromptTuning")]


def _build(config: PromptTuning, site: Site, finder: SiteFinder) -> PromptModule:
    return PromptModule(finder.module(site.host), config.num_tokens, config.init)


register(MethodSpec(
    name="prompt", config_cls=PromptTuning, kind=MethodKind.PROMPT, mergeable=False, routable=True,
    find_sites=_find_sites, build=_build, paper="Lester et al. 2021, arXiv:2104.08691",
    sites_used="the input embedding (prompt prepended to inputs_embeds by a top-level "
               "pre-hook); bert, roberta, xlm-roberta, gpt2, llama families",
))
