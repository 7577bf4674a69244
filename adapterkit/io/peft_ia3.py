"""Hugging Face PEFT's IA3 checkpoints (``adapter_config.json`` with ``peft_type: IA3``).

The config side only: :mod:`.peft` reads, checks and writes the tensors as it does for LoRA, and
:mod:`.peft_keys` names them (``<path>.ia3_l``: (out, 1), or (1, in) for a feedforward module,
for ``Linear`` and GPT-2 ``Conv1D`` alike) and converts PEFT's ``l`` to adapterkit's
``ia3_offset = l - 1`` and back. In float32 (any binary float format) ``l - 1`` is exact for every
``l >= 0.5`` (Sterbenz's lemma up to 2, no lost bits above), so ``(l - 1) + 1 == l`` and a
PEFT -> adapterkit -> PEFT round trip gives the same bits; for ``l < 0.5`` (negative included)
``l - 1`` can round, and the round trip can move ``l`` by up to one unit in the last place of
``l - 1`` (``2**-24`` for ``|l - 1| < 1``). See ``docs/peft.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.checkpoint import STR, STRS, check_kinds
from ..core.sites import is_conv1d
from ..errors import ConfigError, LoadError
from ..methods.ia3 import IA3
from .peft import CONFIG_FILE, _targets, _task_type, _unsupported
from .peft_keys import COMMON_KINDS, check_regexes, peft_sites

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from ..kit import AdapterKit

#: Fields read by the loader (the others must be empty, false, or in ``_IGNORED``).
_READ = frozenset({"peft_type", "task_type", "target_modules", "exclude_modules",
                   "feedforward_modules", "modules_to_save"})
#: Fields with no effect on the weights or outputs of a loaded adapter.
_IGNORED = frozenset({
    "base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping",
    "runtime_config", "init_ia3_weights",  # initialisation only
    "fan_in_fan_out",  # PEFT sets it per module type: True for Conv1D, False for Linear
})


def check_fields(cfg: dict[str, Any], d: Path) -> None:
    check_kinds(cfg, {**COMMON_KINDS, "feedforward_modules": (STR, STRS)}, d / CONFIG_FILE)
    check_regexes(cfg, d / CONFIG_FILE, ("target_modules", "exclude_modules", "feedforward_modules"))
    targets, ff = cfg.get("target_modules"), cfg.get("feedforward_modules")
    if not targets or not isinstance(targets, (str, list)) or targets == "all-linear":
        raise _unsupported(d, "target_modules", targets,
                           "give the module names (a list) or one regular expression")
    if ff is None or not isinstance(ff, (str, list)):
        raise _unsupported(d, "feedforward_modules", ff,
                           "give the names (a list, possibly empty) or one regular expression; "
                           "PEFT's per-model default is not reproduced")
    if isinstance(ff, list) and isinstance(targets, list) and not set(ff) <= set(targets):
        raise _unsupported(d, "feedforward_modules", ff,
                           "PEFT requires a subset of target_modules")
    for field, value in cfg.items():
        if field not in _READ and field not in _IGNORED and value not in (None, False, {}, [], ""):
            raise _unsupported(d, field, value, "adapterkit cannot reproduce its effect")


def _feedforward_hit(path: str, ff: str | list[str]) -> bool:
    """PEFT's test: ``re.fullmatch`` for a string, plain ``str.endswith`` for a list."""
    if isinstance(ff, str):
        return re.fullmatch(ff, path) is not None
    return any(path.endswith(n) for n in ff)


def method_config(kit: AdapterKit, cfg: dict[str, Any], d: Path) -> IA3:
    """An IA3 config that attaches where PEFT would, with the same feedforward modules."""
    finder = kit.finder()
    ff_raw = cfg["feedforward_modules"]
    try:
        paths = peft_sites(finder.modules, cfg)
    except re.error as exc:
        raise _unsupported(d, "target_modules", cfg["target_modules"], str(exc)) from None
    try:
        ff = [p for p in paths if _feedforward_hit(p, ff_raw)]
    except re.error as exc:
        raise _unsupported(d, "feedforward_modules", ff_raw, str(exc)) from None
    if not paths:
        raise LoadError(f"{d / CONFIG_FILE}: target_modules={cfg['target_modules']!r} matches no "
                        "module of this model")
    try:
        return IA3(targets=_targets(finder, cfg, paths),
                   feedforward=_targets(finder, {"target_modules": ff_raw}, ff) if ff else ())
    except (ConfigError, TypeError, ValueError) as exc:
        raise LoadError(f"{d / CONFIG_FILE}: {exc}") from None


def _anchored(paths: list[str]) -> str:
    return "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"


def peft_config(kit: AdapterKit, record: AdapterRecord) -> dict[str, Any]:
    """The ``adapter_config.json`` content PEFT needs for an IA3 ``record``."""
    hosts = [s.host for s in record.sites]
    ff = [h for h in hosts if record.modules[h].feedforward]
    name_or_path = getattr(getattr(kit.model, "config", None), "_name_or_path", None)
    return {
        "peft_type": "IA3", "task_type": _task_type(kit, record),
        "base_model_name_or_path": name_or_path or None, "revision": None,
        "target_modules": _anchored(hosts), "feedforward_modules": _anchored(ff) if ff else [],
        "exclude_modules": None, "modules_to_save": list(record.heads) or None,
        "fan_in_fan_out": any(is_conv1d(kit.model.get_submodule(h)) for h in hosts),
        "init_ia3_weights": record.config.init_ones, "inference_mode": True,
    }
