"""Loading adapters saved by AdapterHub's ``adapters`` library (``save_adapter``).

Bottleneck adapters (Pfeiffer/``seq_bn``, Houlsby/``double_seq_bn``, parallel/``par_bn`` and
plain ``BnConfig`` settings that map exactly) on BERT-family models, and LoRA adapters. The math
of each mapping is described and verified in ``tests/fixtures/adapterhub/FORMAT.md``. A setting
that has no exact equivalent here raises :class:`~adapterkit.errors.LoadError` naming it.
``pytorch_adapter.bin`` files are read only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.checkpoint import (
    BOOL,
    CONFIG_FILE,
    INT,
    NULL,
    NUMBER,
    OBJECT,
    STR,
    STRS,
    Kind,
    check_kinds,
    read_json,
    read_safetensors,
    refuse_non_finite,
)
from ..errors import ConfigError, LoadError
from ..methods.bottleneck import Bottleneck
from ..methods.lora import LoRA

if TYPE_CHECKING:
    from ..kit import AdapterKit

_PRESETS: dict[str, dict[str, Any]] = {
    "seq_bn": {"mh_adapter": False, "output_adapter": True, "reduction_factor": 16,
               "non_linearity": "relu", "original_ln_before": True},
    "double_seq_bn": {"mh_adapter": True, "output_adapter": True, "reduction_factor": 16,
                      "non_linearity": "swish"},
    "par_bn": {"mh_adapter": False, "output_adapter": True, "reduction_factor": 2,
               "non_linearity": "relu", "is_parallel": True, "scaling": 4.0},
    "lora": {"architecture": "lora", "r": 8, "alpha": 8},
}
_ALIASES = {"pfeiffer": "seq_bn", "houlsby": "double_seq_bn", "parallel": "par_bn"}
_ACT = {"relu": "relu", "swish": "silu", "silu": "silu", "gelu": "gelu", "gelu_orig": "gelu",
        "tanh": "tanh", "linear": "identity"}
# field: the only value we can reproduce exactly
_BN_FIXED: dict[str, Any] = {
    "original_ln_after": True, "residual_before_ln": True, "ln_after": False, "use_gating": False,
    "adapter_residual_before_ln": False, "phm_layer": False, "inv_adapter": None,
    "cross_adapter": False, "leave_out": [], "stochastic_depth": 0.0}
_LORA_FIXED = {"use_gating": False, "use_dora": False, "composition_mode": "add", "leave_out": [],
               "vera_d": None, "vera_b": None}
_BERT_FAMILIES = ("bert", "roberta", "xlm-roberta")
#: the kinds of the fields read, at the top level and in ``config``
_META_KINDS: dict[str, tuple[Kind, ...]] = {"name": (STR, NULL), "version": (STR, NULL),
                                            "config": (STR, OBJECT)}
_FLAGS = ("mh_adapter", "output_adapter", "is_parallel", "ln_before", "original_ln_before",
          "selfattn_lora", "intermediate_lora", "output_lora")
_CONFIG_KINDS: dict[str, tuple[Kind, ...]] = {
    "architecture": (STR, NULL), "r": (INT,), "alpha": (NUMBER,),
    "dropout": (NUMBER,), "attn_matrices": (STRS,), "reduction_factor": (NUMBER, OBJECT),
    "scaling": (NUMBER, STR), "non_linearity": (STR,), **{f: (BOOL, NULL) for f in _FLAGS},
}
_BN_KEY = re.compile(r"(?:^|.*?\.)(encoder\.layer\.\d+\.(?:attention\.output|output))"
                     r"\.adapters\.[^.]+\.(adapter_down\.\d+|adapter_up)\.(weight|bias)$")
_LORA_KEY = re.compile(r"(?:^|.*?\.)(encoder\.layer\.\d+\..+?)\.loras\.[^.]+\.(lora_A|lora_B)$")


def _check_fixed(cfg: dict[str, Any], fixed: dict[str, Any], kind: str) -> None:
    bad = [f"{k}={cfg[k]!r} (supported: {v!r})" for k, v in fixed.items()
           if k in cfg and cfg[k] != v and not (v == [] and not cfg[k])]
    if bad:
        raise LoadError(f"AdapterHub {kind} settings with no exact equivalent: {', '.join(bad)}")


def _full_config(meta: dict[str, Any], source: Path) -> dict[str, Any]:
    check_kinds(meta, _META_KINDS, source)
    cfg = meta.get("config")
    if isinstance(cfg, str):
        key = _ALIASES.get(cfg, cfg)
        if key not in _PRESETS:
            raise LoadError(f"unknown AdapterHub config name {cfg!r}; known: "
                            f"{sorted([*_PRESETS, *_ALIASES])}")
        cfg = dict(_PRESETS[key])
    if not isinstance(cfg, dict):
        raise LoadError(f"AdapterHub adapter_config.json has no usable 'config': {cfg!r}")
    check_kinds(cfg, _CONFIG_KINDS, source)
    return cfg


def _bottleneck(cfg: dict[str, Any], version: str | None) -> Bottleneck:
    _check_fixed(cfg, _BN_FIXED, "bottleneck")
    act = str(cfg.get("non_linearity", "relu")).lower()
    if version is None and act == "gelu":  # files without a version meant the tanh GELU
        act = "gelu_new"
    if act not in _ACT:
        raise LoadError(f"AdapterHub non_linearity {act!r} is not supported; supported: {sorted(_ACT)}")
    rf, scaling = cfg.get("reduction_factor"), cfg.get("scaling", 1.0)
    if not isinstance(rf, (int, float)):
        raise LoadError(f"AdapterHub reduction_factor={rf!r}: only one number for all layers is supported")
    if not isinstance(scaling, (int, float)):
        raise LoadError(f"AdapterHub scaling={scaling!r}: only a fixed number is supported")
    mh, out = bool(cfg.get("mh_adapter")), bool(cfg.get("output_adapter"))
    if not (mh or out):
        raise LoadError("AdapterHub config has neither mh_adapter nor output_adapter set")
    parallel = bool(cfg.get("is_parallel"))
    return Bottleneck(
        reduction=rf, placement="both" if mh and out else ("attn" if mh else "ffn"),
        mode="parallel" if parallel else "series", scaling=float(scaling), non_linearity=_ACT[act],
        layer_norm=bool(cfg.get("ln_before")),
        original_ln_before=bool(cfg.get("original_ln_before")) and not parallel,
    )


def _version_below_1_1(version: str | None) -> bool:
    if not version or not version.startswith("adapters."):
        return False
    parts = re.findall(r"\d+", version)
    return tuple(int(p) for p in parts[:2]) < (1, 1)


def _lora(cfg: dict[str, Any], version: str | None) -> LoRA:
    _check_fixed(cfg, _LORA_FIXED, "LoRA")
    roles = {"q": "attn.q", "k": "attn.k", "v": "attn.v"}
    matrices = cfg.get("attn_matrices", ["q", "v"])
    if not set(matrices) <= set(roles):
        raise LoadError(f"AdapterHub attn_matrices={matrices!r:.80}: each is one of {sorted(roles)}")
    targets = [roles[m] for m in matrices] if cfg.get("selfattn_lora", True) else []
    targets += ["ffn.in"] * bool(cfg.get("intermediate_lora")) + ["ffn.out"] * bool(cfg.get("output_lora"))
    if not targets:
        raise LoadError("AdapterHub LoRA config targets no module")
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("alpha", 8))
    if _version_below_1_1(version) and r != alpha:
        alpha = float(r)  # what `adapters` itself does for files from before its scaling fix
    return LoRA(r=r, alpha=alpha, dropout=float(cfg.get("dropout", 0.0)), targets=tuple(targets))


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st, pt = directory / "adapter.safetensors", directory / "pytorch_adapter.bin"
    if st.is_file():
        tensors = read_safetensors(st)
        refuse_non_finite(tensors, st)
        return tensors
    if not pt.is_file():
        raise LoadError(f"{directory} holds neither adapter.safetensors nor pytorch_adapter.bin")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise LoadError(f"{pt} cannot be read safely as a tensor file: {exc}") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LoadError(f"{pt} does not hold a dict of tensors by name")
    refuse_non_finite(state, pt)
    return state


def _our_key(ah_key: str, hosts: list[str], ln_before: bool) -> str | None:
    if m := _BN_KEY.match(ah_key):
        loc, part, leaf = m.groups()
        suffix, index = f"{loc}.dense", part.split(".")[-1]
        module = "up" if part == "adapter_up" else ("norm" if ln_before and index == "0" else "down")
    elif m := _LORA_KEY.match(ah_key):
        suffix, module, leaf = m.group(1), "", m.group(2)
    else:
        return None
    host = next((h for h in hosts if h == suffix or h.endswith("." + suffix)), None)
    if host is None:
        return None
    return f"{host}.{module}.{leaf}" if module else f"{host}.{leaf}"


def _method_config(kit: AdapterKit, cfg: dict[str, Any], version: str | None) -> Any:
    if cfg.get("architecture") == "lora":
        return _lora(cfg, version)
    if cfg.get("architecture") in (None, "bottleneck"):
        if kit.layout is None or kit.layout.family not in _BERT_FAMILIES:
            raise LoadError("AdapterHub bottleneck adapters load into bert, roberta and xlm-roberta "
                            f"models; this one has layout {getattr(kit.layout, 'family', None)!r}")
        return _bottleneck(cfg, version)
    raise LoadError(f"AdapterHub architecture {cfg.get('architecture')!r} is not supported; "
                    "supported: bottleneck, lora")


def load_adapterhub(kit: AdapterKit, directory: Path, name: str | None) -> str:
    """Load an AdapterHub adapter directory into ``kit``; returns the adapter's name."""
    from .kitio import _mismatches, adapter_tensors, install, plan_loaded

    source = directory / CONFIG_FILE
    meta = read_json(source)
    try:
        cfg = _full_config(meta, source)
        config = _method_config(kit, cfg, meta.get("version"))
    except (LoadError, ConfigError) as exc:
        raise LoadError(str(exc) if str(source) in str(exc) else f"{source}: {exc}") from None
    weights = _read_weights(directory)
    chosen = re.sub(r"[^A-Za-z0-9_\-]", "_", name or meta.get("name") or directory.name)
    record = plan_loaded(kit, chosen, config, source, name is None,
                         sum(t.numel() for t in weights.values()))
    hosts = [s.host for s in record.sites]
    found: dict[str, torch.Tensor] = {}
    for key, t in weights.items():
        found[_our_key(key, hosts, bool(cfg.get("ln_before"))) or f"(unmapped) {key}"] = t
    problems = _mismatches(adapter_tensors(kit, record), found)
    if problems:
        file = next((p for p in (directory / "adapter.safetensors",
                                 directory / "pytorch_adapter.bin") if p.is_file()), directory)
        raise LoadError(f"{file} does not fit this model ({len(problems)} problem(s)):\n  "
                        + "\n  ".join(problems))
    install(kit, record, found)
    return record.name
