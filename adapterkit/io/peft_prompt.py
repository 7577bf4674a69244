"""Hugging Face PEFT's prompt-tuning and prefix-tuning checkpoints (``adapter_config.json`` with
``peft_type`` ``PROMPT_TUNING`` or ``PREFIX_TUNING``).

PEFT stores one tensor, ``prompt_embeddings``:

- prompt tuning: the soft prompt, (P, hidden), adapterkit's ``PromptModule.prompt``;
- prefix tuning: the key/value table, (P, 2 * L * K * d) for L layers, K key/value heads of head
  dim d, adapterkit's ``PrefixModule.prefix`` in the same layout. With ``prefix_projection``
  PEFT saves the table its MLP computes (the MLP itself is not saved), so such a checkpoint loads
  as a plain prefix, and an adapterkit prefix trained with ``reparameterize=True`` is written as
  the table it computes, with ``prefix_projection: false``.

Trained heads (``modules_to_save`` and the task type's heads) are stored as
``base_model.<path>.<key>``. Only encoder-only and decoder-only models load
(``num_transformer_submodules: 1``). See ``docs/peft.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..core.checkpoint import BOOL, INT, NULL, STR, STRS, Kind, check_kinds
from ..core.typed import text_config
from ..errors import ConfigError, LoadError
from ..methods.prefix import PrefixModule, PrefixTuning, kv_shape
from ..methods.prompt import PromptTuning
from .kitio import HEAD

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from ..kit import AdapterKit

TYPES = {"PROMPT_TUNING": "prompt", "PREFIX_TUNING": "prefix"}
PEFT_TYPE = {v: k for k, v in TYPES.items()}
TENSOR = "prompt_embeddings"
HEAD_PREFIX = "base_model."
#: Fields read by the loader (the others must be empty, false, or in ``_IGNORED``).
_READ = frozenset({
    "peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_transformer_submodules",
    "num_attention_heads", "num_layers", "modules_to_save", "prefix_projection",
    "encoder_hidden_size",
})
#: Fields with no effect on the weights or outputs of a loaded adapter.
_IGNORED = frozenset({
    "base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping",
    "runtime_config", "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
    "tokenizer_kwargs", "init_weights",  # initialisation only
})
#: Task types whose PEFT forward adapterkit's prompt and prefix reproduce (PEFT's model class
#: without a task type does not apply prompts at all)
TASKS = ("SEQ_CLS", "CAUSAL_LM", "FEATURE_EXTRACTION")
#: The kinds of the fields read
_KINDS: dict[str, tuple[Kind, ...]] = {
    "peft_type": (STR,), "task_type": (STR, NULL), "modules_to_save": (STRS, NULL),
    "num_virtual_tokens": (INT,), "num_transformer_submodules": (INT, NULL),
    "token_dim": (INT, NULL), "num_attention_heads": (INT, NULL), "num_layers": (INT, NULL),
    "encoder_hidden_size": (INT, NULL), "prefix_projection": (BOOL, NULL),
}


def _unsupported(d: Path, field: str, value: Any, why: str) -> LoadError:
    return LoadError(f"{d / 'adapter_config.json'}: unsupported {field}={value!r}: {why}")


def check_fields(cfg: dict[str, Any], d: Path) -> None:
    check_kinds(cfg, _KINDS, d / "adapter_config.json")
    if cfg.get("num_transformer_submodules", 1) not in (1, None):
        raise _unsupported(d, "num_transformer_submodules", cfg["num_transformer_submodules"],
                           "encoder-decoder prompts do not load; encoder-only and decoder-only "
                           "models do")
    if cfg.get("task_type") not in TASKS:
        raise _unsupported(d, "task_type", cfg.get("task_type"),
                           f"prompt and prefix checkpoints load for task types {list(TASKS)}")
    n = cfg.get("num_virtual_tokens")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise _unsupported(d, "num_virtual_tokens", n, "a positive integer is needed")
    for field, value in cfg.items():
        if field not in _READ and field not in _IGNORED and value not in (None, False, {}, [], ""):
            raise _unsupported(d, field, value, "adapterkit cannot reproduce its effect")


def _model_shape(kit: AdapterKit, method: str) -> dict[str, int]:
    """The model shape PEFT records: for a prefix the key/value width and heads (fewer than the
    query heads under grouped-query attention), for a prompt the hidden size and heads."""
    cfg = text_config(kit.model)
    layers, kv_heads, head_dim = kv_shape(kit.model)
    if method == "prefix":
        return {"num_layers": layers, "token_dim": kv_heads * head_dim,
                "num_attention_heads": kv_heads}
    return {"num_layers": layers, "token_dim": int(cfg.hidden_size),
            "num_attention_heads": int(cfg.num_attention_heads)}


def method_config(kit: AdapterKit, cfg: dict[str, Any], d: Path) -> PromptTuning | PrefixTuning:
    """The prompt or prefix config of the checkpoint, after checking that its recorded model
    shape (layers, hidden size, heads) is this model's; every difference is reported."""
    shape = _model_shape(kit, TYPES[cfg["peft_type"]])
    bad = [f"{k}={cfg[k]!r} (this model: {v})" for k, v in shape.items()
           if cfg.get(k) is not None and cfg[k] != v]
    if bad:
        raise LoadError(f"{d / 'adapter_config.json'} was made for another model shape: "
                        + "; ".join(bad))
    n = cfg["num_virtual_tokens"]
    try:
        if cfg["peft_type"] == "PROMPT_TUNING":
            return PromptTuning(num_tokens=n)
        return PrefixTuning(num_tokens=n)
    except ConfigError as exc:
        raise LoadError(f"{d / 'adapter_config.json'}: {exc}") from None


def key_map(ours: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Size]]:
    """Our tensor key -> (PEFT key, shape): the prompt or prefix table is ``prompt_embeddings``,
    a head tensor ``base_model.<path>.<key>``."""
    out = {}
    for key, t in ours.items():
        if key.startswith(HEAD):
            out[key] = (HEAD_PREFIX + key[len(HEAD):], t.shape)
        elif key.rsplit(".", 1)[-1] in ("prompt", "prefix"):
            out[key] = (TENSOR, t.shape)
        else:
            raise ValueError(f"{key}: no PEFT name (a reparameterised prefix is written as its "
                             "table)")
    return out


def export_tensors(kit: AdapterKit, record: AdapterRecord,
                   ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ours`` with a reparameterised prefix replaced by the table its MLP computes."""
    (host, module), = record.modules.items()
    if record.spec.name != "prefix":
        return ours
    prefix = cast(PrefixModule, module)  # the one module of a prefix adapter
    if not prefix.reparameterized:
        return ours
    with torch.no_grad():
        table = prefix.table().detach()
    kept = {k: t for k, t in ours.items() if k.startswith(HEAD)}
    return {f"{host}.prefix": table, **kept}


def peft_config(kit: AdapterKit, record: AdapterRecord, task_type: str | None) -> dict[str, Any]:
    """The ``adapter_config.json`` content PEFT needs for a prompt or prefix adapter."""
    name_or_path = getattr(getattr(kit.model, "config", None), "_name_or_path", None)
    shape = _model_shape(kit, record.spec.name)
    cfg: dict[str, Any] = {
        "peft_type": PEFT_TYPE[record.spec.name], "task_type": task_type,
        "base_model_name_or_path": name_or_path or None, "revision": None,
        "num_virtual_tokens": record.config.num_tokens, "num_transformer_submodules": 1,
        **shape, "modules_to_save": list(record.heads) or None, "inference_mode": True,
    }
    if record.spec.name == "prompt":
        cfg.update(prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                   tokenizer_name_or_path=None, tokenizer_kwargs=None)
    else:
        cfg.update(prefix_projection=False, encoder_hidden_size=shape["token_dim"])
    return cfg
