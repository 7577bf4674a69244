"""Hugging Face PEFT's checkpoint format (``adapter_config.json`` with ``peft_type`` ``LORA``,
``IA3``, ``PROMPT_TUNING`` or ``PREFIX_TUNING`` plus ``adapter_model.safetensors``, or
``adapter_model.bin`` read with ``weights_only=True``; the IA3 config fields are in
:mod:`.peft_ia3`, the prompt and prefix ones in :mod:`.peft_prompt`).

Loading reproduces PEFT's choice of modules exactly (see :mod:`.peft_keys`) and refuses every
config field whose effect adapterkit does not reproduce. Saving writes what
``peft.PeftModel.from_pretrained`` loads to the same modules and outputs, with the tensor names
vLLM's LoRA loader expects. See ``docs/peft.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.base import SLOT
from ..core.checkpoint import STR, _atomic_write, check_kinds, read_json, read_safetensors, refuse_non_finite
from ..core.distributed import is_main_process
from ..core.sites import SiteFinder, is_conv1d
from ..errors import AdapterError, ConfigError, LoadError, TargetError
from ..methods import get_method, methods
from .kitio import _mismatches, adapter_tensors, install, plan_loaded
from .peft_keys import (
    LORA_KINDS,
    PREFIX,
    TASK_HEADS,
    check_regexes,
    from_peft,
    in_saved_module,
    key_map,
    peft_sites,
    saved_names,
    saved_paths,
    to_peft,
)

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from ..kit import AdapterKit

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"

#: Fields read by the loader (the others must be empty, false, or in ``_IGNORED``).
_READ = frozenset({
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules",
    "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save", "bias",
    "use_dora", "rank_pattern", "alpha_pattern",
})
#: Fields with no effect on the weights or outputs of a loaded adapter.
_IGNORED = frozenset({
    "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights",
    "fan_in_fan_out",  # PEFT sets it per module type: True for Conv1D, False for Linear
    "peft_version", "auto_mapping", "megatron_core", "qalora_group_size", "runtime_config",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config",  # initialisation only
})
_TASKS = (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
          ("ForQuestionAnswering", "QUESTION_ANS"), ("ForCausalLM", "CAUSAL_LM"),
          ("LMHeadModel", "CAUSAL_LM"))


class PeftExportError(AdapterError, ValueError):
    """The adapter uses a method or option that PEFT's LoRA or IA3 format cannot hold."""


# -- loading -----------------------------------------------------------------------------------
def _unsupported(d: Path, field: str, value: Any, why: str = "") -> LoadError:
    return LoadError(f"{d / CONFIG_FILE}: unsupported {field}={value!r}"
                     + (f": {why}" if why else ""))


def _check_fields(cfg: dict[str, Any], d: Path) -> None:
    check_kinds(cfg, LORA_KINDS, d / CONFIG_FILE)
    check_regexes(cfg, d / CONFIG_FILE, ("target_modules", "exclude_modules", "layers_pattern"))
    if cfg.get("peft_type") != "LORA":
        raise _unsupported(d, "peft_type", cfg.get("peft_type"),
                           "only LORA and IA3 checkpoints load")
    if cfg.get("use_dora") and "dora" not in {m.name for m in methods()}:
        raise _unsupported(d, "use_dora", True,
                           "DoRA checkpoints need the 'dora' method, which is not registered")
    if cfg.get("bias", "none") != "none":
        raise _unsupported(d, "bias", cfg["bias"], "only bias='none' (no trained biases) loads")
    for field in ("rank_pattern", "alpha_pattern"):
        if cfg.get(field):
            raise _unsupported(d, field, cfg[field], "per-module ranks and alphas do not load")
    targets = cfg.get("target_modules")
    if not targets or not isinstance(targets, (str, list)) or targets == "all-linear":
        raise _unsupported(d, "target_modules", targets,
                           "give the module names (a list) or one regular expression")
    if isinstance(targets, str) and cfg.get("layers_to_transform") not in (None, []):
        raise _unsupported(d, "layers_to_transform", cfg["layers_to_transform"],
                           "PEFT refuses it with a regular-expression target_modules")
    for field, value in cfg.items():
        if field not in _READ and field not in _IGNORED and value not in (None, False, {}, [], ""):
            raise _unsupported(d, field, value, "adapterkit cannot reproduce its effect")


def _incompatible(kit: AdapterKit, hosts: list[str]) -> list[str]:
    """Sites where PEFT's LoRA computes something other than adapterkit's."""
    bad = []
    for host in hosts:
        m = kit.model.get_submodule(host)
        if isinstance(m, nn.Conv2d) and tuple(m.dilation) != (1, 1):
            bad.append(f"{host}: dilated Conv2d (PEFT's lora_A ignores the dilation)")
        if isinstance(m, nn.Embedding) and hasattr(m, "embed_scale"):
            bad.append(f"{host}: scaled embedding (PEFT scales the LoRA output by embed_scale)")
    return bad


def _targets(finder: SiteFinder, cfg: dict[str, Any], paths: list[str]) -> tuple[str, ...]:
    """PEFT's own target names when adapterkit matches them to the same paths, else anchored
    regexes of the paths themselves."""
    raw = cfg["target_modules"]
    if isinstance(raw, str):
        natural: tuple[str, ...] = (raw,)
    else:
        natural = tuple(t for t in raw if any(p == t or p.endswith(f".{t}") for p in paths))
    try:
        if natural and finder.paths(natural) == paths:
            return natural
    except TargetError:
        pass
    return tuple(f"^{re.escape(p)}$" for p in paths)


def _method_config(kit: AdapterKit, cfg: dict[str, Any], d: Path) -> Any:
    """A LoRA config (a DoRA config with ``use_dora``) that attaches where PEFT would."""
    finder = kit.finder()
    try:
        paths = peft_sites(finder.modules, cfg)
    except re.error as exc:
        raise _unsupported(d, "target_modules", cfg["target_modules"], str(exc)) from None
    if not paths:
        raise LoadError(f"{d / CONFIG_FILE}: target_modules={cfg['target_modules']!r} (with "
                        f"layers_to_transform={cfg.get('layers_to_transform')!r}) matches no "
                        "module of this model")
    bad = _incompatible(kit, paths)
    if bad:
        raise LoadError(f"{d / CONFIG_FILE}: cannot reproduce PEFT's LoRA on " + "; ".join(bad))
    config_cls = get_method("dora" if cfg.get("use_dora") else "lora").config_cls
    try:
        return config_cls(r=cfg.get("r", 8), alpha=cfg.get("lora_alpha", 8),
                          dropout=float(cfg.get("lora_dropout") or 0.0),
                          targets=_targets(finder, cfg, paths),
                          use_rslora=bool(cfg.get("use_rslora")))
    except (ConfigError, TypeError, ValueError) as exc:
        raise LoadError(f"{d / CONFIG_FILE}: {exc}") from None


def read_peft_tensors(d: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT checkpoint; pickle files are read with ``weights_only=True``."""
    if (d / SAFETENSORS_FILE).is_file() or not (d / BIN_FILE).is_file():
        tensors = read_safetensors(d / SAFETENSORS_FILE)
        refuse_non_finite(tensors, d / SAFETENSORS_FILE)
        return tensors
    try:
        data = torch.load(d / BIN_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types
        raise LoadError(f"{d / BIN_FILE} is no readable weights-only torch file: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(t, torch.Tensor) for t in data.values()):
        raise LoadError(f"{d / BIN_FILE} must hold a dict of tensors")
    tensors = {str(k): t for k, t in data.items()}
    refuse_non_finite(tensors, d / BIN_FILE)
    return tensors


def _default_name(d: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", d.resolve().name).lstrip("-")
    return name or "default"


def _plan(kit: AdapterKit, config: Any, cfg: dict[str, Any], d: Path, name: str | None,
          found: dict[str, torch.Tensor]) -> AdapterRecord:
    values = sum(t.numel() for t in found.values())
    record = plan_loaded(kit, name or _default_name(d), config, d / CONFIG_FILE, False, values)
    from .peft_prompt import HEAD_PREFIX, TYPES

    heads = saved_paths(kit.finder().modules, saved_names(cfg))
    prefix = HEAD_PREFIX if cfg.get("peft_type") in TYPES else PREFIX
    # a module to save with no tensors in the file keeps its base weights in PEFT too
    record.heads = tuple(h for h in heads if any(k.startswith(f"{prefix}{h}.") for k in found))
    return record


def _reader(kind: Any) -> tuple[Any, Any]:
    """The config check and the method-config builder for a ``peft_type``."""
    from . import peft_ia3, peft_prompt

    if kind == "IA3":
        return peft_ia3.check_fields, peft_ia3.method_config
    if kind in peft_prompt.TYPES:
        return peft_prompt.check_fields, peft_prompt.method_config
    return _check_fields, _method_config


def load_peft(kit: AdapterKit, directory: Path, name: str | None) -> str:
    """Load a PEFT LoRA, IA3, prompt-tuning or prefix-tuning checkpoint into ``kit``; the model
    is unchanged if this raises."""
    from . import peft_prompt

    d = Path(directory)
    cfg = read_json(d / CONFIG_FILE)
    check_kinds(cfg, {"peft_type": (STR,)}, d / CONFIG_FILE)
    check, build_config = _reader(cfg.get("peft_type"))
    check(cfg, d)
    found = read_peft_tensors(d)
    config = build_config(kit, cfg, d)
    record = _plan(kit, config, cfg, d, name, found)
    ours = adapter_tensors(kit, record)
    if cfg["peft_type"] in peft_prompt.TYPES:
        keys = peft_prompt.key_map(ours)
    else:
        keys = key_map(kit, ours, record.modules)
    problems = _mismatches(to_peft(ours, keys), found)
    if problems:
        weights = d / (SAFETENSORS_FILE if (d / SAFETENSORS_FILE).is_file() else BIN_FILE)
        raise LoadError(f"{weights} does not fit this model ({len(problems)} problem(s)):\n  "
                        + "\n  ".join(problems))
    install(kit, record, from_peft(found, keys, ours))
    return record.name


# -- saving ------------------------------------------------------------------------------------
def _check_exportable(kit: AdapterKit, record: AdapterRecord) -> None:
    if record.spec.name not in ("lora", "dora", "ia3", "prompt", "prefix"):
        raise PeftExportError(
            f"adapter {record.name!r} uses the {record.spec.name} method; format='peft' writes "
            "PEFT LoRA, IA3, prompt-tuning and prefix-tuning checkpoints, which hold LoRA (with "
            "rsLoRA), DoRA, IA3, PromptTuning and PrefixTuning adapters only"
        )
    if str(getattr(record.config, "init", "")).startswith("pissa"):
        raise PeftExportError(
            f"adapter {record.name!r} is a PiSSA adapter, which needs its residual base weights; "
            "save it with adapterkit.save_pissa_as_lora(kit, name, directory, format='peft'), a "
            "plain LoRA for the original base"
        )
    if getattr(record.config, "rank_pattern", ()):
        raise PeftExportError(
            f"adapter {record.name!r} has per-site ranks (rank_pattern), which format='peft' "
            "does not write; save it in the adapterkit format"
        )
    hosts = [s.host for s in record.sites]
    bad = [] if record.spec.name in ("prompt", "prefix") else _incompatible(kit, hosts)
    bad += [f"{h}: inside a trained head (PEFT puts no adapter in modules_to_save)"
            for h in hosts if in_saved_module(h, record.heads)]
    extra = set(saved_paths(kit.finder().modules, record.heads)) - set(record.heads)
    bad += [f"{p}: PEFT would save it as a head too (its path ends with a head's)"
            for p in sorted(extra)]
    if bad:
        raise PeftExportError(f"adapter {record.name!r} cannot be saved for PEFT: "
                              + "; ".join(bad))


def _task_type(kit: AdapterKit, record: AdapterRecord) -> str | None:
    """PEFT's task type from the model class, if every module it makes PEFT save is a trained
    head (PEFT fails to load a checkpoint without the tensors of a module to save)."""
    cls = type(kit.model).__name__
    task = next((t for suffix, t in _TASKS if cls.endswith(suffix)), None)
    implied = saved_paths(kit.finder().modules, TASK_HEADS.get(task or "", ()))
    return task if set(implied) <= set(record.heads) else None


def _alpha(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def peft_config(kit: AdapterKit, record: AdapterRecord) -> dict[str, Any]:
    """The ``adapter_config.json`` content PEFT needs for ``record``."""
    config = record.config
    hosts = [s.host for s in record.sites]
    name_or_path = getattr(getattr(kit.model, "config", None), "_name_or_path", None)
    return {
        "peft_type": "LORA", "task_type": _task_type(kit, record),
        "base_model_name_or_path": name_or_path or None, "revision": None,
        "r": config.r, "lora_alpha": _alpha(config.alpha), "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora, "use_dora": record.spec.name == "dora",
        "target_modules": "^(?:" + "|".join(re.escape(h) for h in hosts) + ")$",
        "exclude_modules": None, "layers_to_transform": None, "layers_pattern": None,
        "modules_to_save": list(record.heads) or None, "rank_pattern": {}, "alpha_pattern": {},
        "fan_in_fan_out": any(is_conv1d(kit.model.get_submodule(h)) for h in hosts),
        "bias": "none", "init_lora_weights": True, "inference_mode": True,
    }


def _prompt_task(kit: AdapterKit, record: AdapterRecord) -> str:
    """PEFT's task type for a prompt or prefix adapter on this model (see ``_task_type``)."""
    from . import peft_prompt

    task = _task_type(kit, record)
    if task is None and type(kit.model).__name__.endswith(("ForSequenceClassification",
                                                             "ForCausalLM", "LMHeadModel")):
        raise PeftExportError(f"adapter {record.name!r}: PEFT would load the model's head as a "
                              "module to save; train it with the adapter (train_also) first")
    task = task or "FEATURE_EXTRACTION"
    if task not in peft_prompt.TASKS:
        raise PeftExportError(f"adapter {record.name!r}: PEFT's {task} model runs prompts in "
                              f"another way; prompt and prefix export supports "
                              f"{list(peft_prompt.TASKS)}")
    return task


def _peft_tensors(kit: AdapterKit, record: AdapterRecord) -> dict[str, torch.Tensor]:
    from . import peft_prompt

    # a head's state_dict also holds the adapter slots of other adapters it hosts: not PEFT's
    ours = {k: t for k, t in adapter_tensors(kit, record).items() if f".{SLOT}." not in k}
    if record.spec.name in peft_prompt.PEFT_TYPE:
        ours = peft_prompt.export_tensors(kit, record, ours)
        keys = peft_prompt.key_map(ours)
    else:
        keys = key_map(kit, ours, record.modules)
    return {k: t.detach().to("cpu").contiguous().clone() for k, t in to_peft(ours, keys).items()}


def save_peft(kit: AdapterKit, record: AdapterRecord, directory: Path) -> None:
    """Write ``record`` as a PEFT checkpoint; each file appears whole or not at all."""
    from safetensors.torch import save_file

    from . import peft_prompt
    from .peft_ia3 import peft_config as ia3_config

    _check_exportable(kit, record)
    if record.spec.name in peft_prompt.PEFT_TYPE:
        cfg = peft_prompt.peft_config(kit, record, _prompt_task(kit, record))
    else:
        cfg = (ia3_config if record.spec.name == "ia3" else peft_config)(kit, record)
    tensors = _peft_tensors(kit, record)  # gathered on every rank; rank 0 writes
    if not is_main_process():
        return
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / SAFETENSORS_FILE,
                  lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(text))
