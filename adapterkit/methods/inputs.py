"""Input-level adapters (prompt and prefix tuning): shared machinery.

These methods do not change a host module's output. While one is active, a forward pre-hook on the
top-level model (:class:`InputPreHook`, installed by the executor) rewrites the model's keyword
arguments the way PEFT's ``PeftModel.forward`` / ``prepare_inputs_for_generation`` do: the prompt
is prepended to ``inputs_embeds``, or the prefixes are put in front of the ``past_key_values``
cache, and ``attention_mask`` (and the other per-position arguments) grow by ``num_tokens``.
Their parameters still live in an adapter slot (hosted at the input embedding module), so they
are found, trained, saved and loaded like every other adapter's.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..core.base import AdapterModule, Site
from ..core.requires import require
from ..core.sites import SiteFinder, model_type_of
from ..errors import AdapterError, TargetError

#: layout families whose models take ``inputs_embeds`` and a ``past_key_values`` Cache the way
#: the input-level methods use them (llama covers mistral, qwen2 and qwen3)
FAMILIES = ("bert", "roberta", "xlm-roberta", "gpt2", "llama")
#: the oldest transformers the input-level methods are tested on (make test-floor); older ones
#: pass no Cache objects in some families (GPT-2 before 4.53, BERT before 4.56) and their task
#: heads (BertForSequenceClassification, ...) take no KV cache to hand to the backbone
MIN_TRANSFORMERS = "5.0"
_SIGNATURES: dict[type, tuple[Any, ...]] = {}  # forward's parameters, per model class
_POSITIONAL: dict[type, tuple[str, ...]] = {}  # names forward's positional arguments bind to


class InputAdapterModule(AdapterModule):
    """An adapter that rewrites the top-level forward's inputs (``prepare``) instead of adding a
    delta at its host; at the host it is the identity."""

    num_tokens: int

    def apply_delta(self, h: torch.Tensor, x: Any, base: nn.Module) -> torch.Tensor:
        return h

    def prepare(self, model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The top-level forward's keyword arguments with this adapter's tokens added."""
        raise NotImplementedError

    def table(self) -> torch.Tensor:
        """The adapter's tokens, (num_tokens, width): prompt embeddings or per-layer prefixes
        (per-example routing stacks these tables)."""
        raise NotImplementedError


class InputPreHook:
    """Forward pre-hook (with kwargs) of the top-level model running the active input-level
    adapters' ``prepare``. An object rather than a closure, so that ``copy.deepcopy(model)``
    binds the copy's hook to the copy's state."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        plan = self.state.plan
        mods = getattr(plan, "inputs", ()) if plan is not None else ()
        if not mods:
            return None
        kw = as_kwargs(module, args, kwargs)
        for mod in mods:
            kw = mod.prepare(module, kw)
        return (), kw


def forward_params(model: nn.Module) -> tuple[Any, ...]:
    """The ``inspect.Parameter``s of ``model.forward``, read once per model class."""
    params = _SIGNATURES.get(type(model))
    if params is None:
        params = _SIGNATURES[type(model)] = tuple(inspect.signature(model.forward).parameters.values())
    return params


def as_kwargs(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Positional arguments of ``model.forward`` bound to their names, merged with ``kwargs``."""
    if not args:
        return dict(kwargs)
    names = _POSITIONAL.get(type(model))
    if names is None:
        names = _POSITIONAL[type(model)] = tuple(
            p.name for p in forward_params(model) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if len(args) > len(names):
        raise AdapterError(f"{type(model).__name__}.forward got {len(args)} positional arguments; "
                           f"prompt and prefix tuning can name only {len(names)}")
    return {**dict(zip(names, args)), **kwargs}


#: the KV-cache keyword of a transformers forward: ``cache`` from transformers 5.24 on (which
#: still maps a ``past_key_values`` argument onto it), ``past_key_values`` before
CACHE_NAMES = ("cache", "past_key_values")


def get_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache in a forward's keyword arguments, under either name; None when absent."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def incoming_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache this forward extends: ``get_cache``, except None under ``use_cache=False``,
    where a cache present can only be the one an input adapter filled in an earlier call
    (``generate(use_cache=False)`` hands it back) and every call starts afresh."""
    return None if kwargs.get("use_cache") is False else get_cache(kwargs)


def set_cache(model: nn.Module, kwargs: dict[str, Any], cache: Any) -> None:
    """Put ``cache`` in ``kwargs`` under the name the caller used, else the one
    ``model.forward`` takes; the other name is dropped."""
    present = [n for n in CACHE_NAMES if kwargs.get(n) is not None]
    if present:
        name = present[0]
    else:
        takes = any(p.name == "cache" for p in forward_params(model))
        name = "cache" if takes else "past_key_values"
    for n in CACHE_NAMES:
        kwargs.pop(n, None)
    kwargs[name] = cache


def cache_is_empty(past: Any) -> bool:
    """True when no tokens have been cached yet: the first forward, or no cache at all."""
    if past is None:
        return True
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length()) == 0
    raise AdapterError(f"the KV cache (past_key_values) must be a transformers Cache, got "
                       f"{type(past).__name__}")


def check_mask(mask: Any) -> torch.Tensor:
    """``mask`` if it is a 2D (batch, length) tensor; AdapterError otherwise."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise AdapterError(
            "prompt and prefix tuning need a 2D attention_mask (batch, length) or none; "
            f"got {getattr(mask, 'shape', type(mask).__name__)} (static caches and 4D masks "
            "are not supported)")
    return mask


def grow(kwargs: dict[str, Any], n: int) -> dict[str, Any]:
    """``attention_mask`` gets ``n`` leading ones (the new tokens are attended) and
    ``position_ids`` and ``cache_position`` move ``n`` on, as PEFT does; other arguments are
    kept. ``cache_position`` (the new tokens' indices in the KV cache), which transformers
    before 5.4 builds its causal mask from and passes in ``generate()``, counts the caller's
    tokens only: the ``n`` added positions come in front of it."""
    mask = kwargs.get("attention_mask")
    if mask is not None:
        mask = check_mask(mask)
        ones = mask.new_ones(mask.shape[0], n)
        kwargs["attention_mask"] = torch.cat([ones, mask], 1)
    for key in ("position_ids", "cache_position"):
        pos = kwargs.get(key)
        if pos is not None:
            kwargs[key] = pos + n
    return kwargs


def prepend_positions(kwargs: dict[str, Any], key: str, pos: Any, n: int) -> None:
    """``kwargs[key]`` = ``[0..n-1, pos + n]`` along the last dim (``pos`` as the caller gave it,
    or None to leave ``key`` out): the positions of ``n`` new inputs in front of ``pos``."""
    if pos is None:
        return
    head = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(*pos.shape[:-1], n)
    kwargs[key] = torch.cat([head, pos + n], -1)


def batch_of(kwargs: dict[str, Any]) -> int:
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise AdapterError("prompt and prefix tuning need input_ids or inputs_embeds")


def input_site(finder: SiteFinder, method: str) -> Site:
    """The one site of an input-level method: the model's input embedding, after checking that
    the model's family is supported and the installed transformers new enough."""
    family = finder.layout.family if finder.layout is not None else None
    if family not in FAMILIES:
        raise TargetError(
            f"{method} supports the layout families {list(FAMILIES)} (llama also covers mistral, "
            f"qwen2 and qwen3); this model is model_type={model_type_of(finder.model)!r}"
            + (f" (layout {family!r})" if family else " with no layout"))
    require("transformers", MIN_TRANSFORMERS, method,
            "prompt and prefix tuning hand transformers Cache objects to the model's forward")
    get = getattr(finder.model, "get_input_embeddings", None)
    embedding = get() if get is not None else None
    path = next((p for p, m in finder.modules.items() if m is embedding and p), None)
    if path is None:
        raise TargetError(f"{method} needs the model's input embedding (get_input_embeddings()); "
                          f"{type(finder.model).__name__} gives {type(embedding).__name__}")
    return Site(host=path, role="embed")


def pad_front(kwargs: dict[str, Any], n: int, s: int) -> dict[str, Any]:
    """``token_type_ids`` with ``n`` leading zeros and token-level ``labels`` (second dim ``s``,
    the input length) with ``n`` leading ``-100``: what ``n`` prompt positions in front need."""
    types = kwargs.get("token_type_ids")
    if types is not None:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], n), types], 1)
    labels = kwargs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() >= 2 and labels.shape[1] == s:
        pad = labels.new_full((labels.shape[0], n, *labels.shape[2:]), -100)
        kwargs["labels"] = torch.cat([pad, labels], 1)
    return kwargs
