"""PEFT's module matching and tensor naming for LoRA and IA3, written against module paths.

These functions reproduce what ``peft`` (checked against 0.21) does when it injects a LoRA
config into a model, so that adapterkit attaches to exactly the modules PEFT would:

- ``target_modules`` as a list: a path matches if it equals a name or ends with ``"." + name``;
  ``layers_to_transform`` / ``layers_pattern`` then filter suffix matches by layer index.
- ``target_modules`` as a string: ``re.fullmatch`` on the path.
- ``exclude_modules``: the same two forms, removing paths.
- modules in ``modules_to_save`` (and everything under them) never get LoRA; a module is saved
  when its path ends with one of the names (plain ``str.endswith``, as PEFT does).

IA3's ``ia3_offset`` (flat, ``l - 1``) is PEFT's ``ia3_l`` (``l``) as a column (out, 1), or as a
row (1, in) for a feedforward module: :func:`to_peft` adds 1 and :func:`from_peft` subtracts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.checkpoint import BOOL, INT, INTS, NULL, NUMBER, OBJECT, STR, STRS, Kind
from ..errors import LoadError
from .kitio import HEAD

if TYPE_CHECKING:
    from ..kit import AdapterKit

PREFIX = "base_model.model."
IA3_LEAF, IA3_PEFT = "ia3_offset", "ia3_l"
#: Modules that PEFT adds to ``modules_to_save`` for a task type.
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}


def nested_repeat(pattern: str) -> bool:
    """Whether ``pattern`` repeats a group that holds a repeat or an alternative (``(.*)*``,
    ``(a+|b)+``): the shape of regular expression whose matching time can grow exponentially
    with the length of a module path. Loaders refuse such patterns from files."""
    stack = [False]  # per open group: whether it holds a repeat or an alternative
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1
        elif c == "[":
            i = _class_end(pattern, i)
        elif c == "(":
            stack.append(False)
        elif c == ")" and len(stack) > 1:
            inner = stack.pop()
            if inner and pattern[i + 1:i + 2] in ("*", "+", "{"):
                return True
            stack[-1] = stack[-1] or inner
        elif c in "*+{|":
            stack[-1] = True
        i += 1
    return False


def _class_end(pattern: str, i: int) -> int:
    """The index of the ``]`` that closes the character class opened at ``i``."""
    j = i + 1 + (pattern[i + 1:i + 2] == "^")
    j += pattern[j:j + 1] == "]"  # a leading ] is a literal
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j


#: The kinds of the fields every PEFT config may have (the IA3 and prompt readers add theirs)
COMMON_KINDS: dict[str, tuple[Kind, ...]] = {
    "peft_type": (STR,), "task_type": (STR, NULL), "modules_to_save": (STRS, NULL),
    "target_modules": (STR, STRS), "exclude_modules": (STR, STRS, NULL),
}
LORA_KINDS: dict[str, tuple[Kind, ...]] = {
    **COMMON_KINDS, "r": (INT,), "lora_alpha": (NUMBER,), "lora_dropout": (NUMBER, NULL),
    "use_rslora": (BOOL, NULL), "use_dora": (BOOL, NULL), "bias": (STR,),
    "layers_to_transform": (INT, INTS, NULL), "layers_pattern": (STR, STRS, NULL),
    "rank_pattern": (OBJECT, NULL), "alpha_pattern": (OBJECT, NULL),
}


def check_regexes(cfg: dict[str, Any], source: Path, fields: tuple[str, ...]) -> None:
    """Refuse the regular expressions in ``fields`` of ``cfg`` (read from ``source``) whose
    matching time can grow exponentially (see :func:`nested_repeat`)."""
    for field in fields:
        value = cfg.get(field)
        for pattern in [value] if isinstance(value, str) else value or ():
            if isinstance(pattern, str) and nested_repeat(pattern):
                raise LoadError(f"{source}: unsupported {field}={pattern!r:.100}: a repeated group "
                                "that holds a repeat or an alternative can take exponential time "
                                "to match")


def saved_names(cfg: dict[str, Any]) -> list[str]:
    """``modules_to_save`` as PEFT uses it: the listed names plus those of the task type."""
    names = list(cfg.get("modules_to_save") or [])
    return names + [n for n in TASK_HEADS.get(str(cfg.get("task_type")), ()) if n not in names]


def in_saved_module(path: str, names: Iterable[str]) -> bool:
    """Whether ``path`` is, or lies under, a module to save (PEFT never puts LoRA there)."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in names)


def _name_hit(path: str, names: str | Sequence[str]) -> bool:
    if isinstance(names, str):
        return re.fullmatch(names, path) is not None
    return path in names or any(path.endswith(f".{n}") for n in names)


def _layer_index(path: str, pattern: str | Sequence[str] | None) -> int | None:
    if not pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", path)
    else:
        m = None
        for p in [pattern] if isinstance(pattern, str) else pattern:
            m = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", path)
            if m is not None:
                break
    return int(m.group("idx")) if m else None


def _target_hit(path: str, cfg: dict[str, Any]) -> bool:
    targets = cfg["target_modules"]
    if isinstance(targets, str) or path in targets:
        return _name_hit(path, targets)
    if not any(path.endswith(f".{t}") for t in targets):
        return False
    layers = cfg.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _layer_index(path, cfg.get("layers_pattern"))
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def peft_sites(paths: Iterable[str], cfg: dict[str, Any]) -> list[str]:
    """The paths PEFT puts LoRA on, in the order given."""
    exclude = cfg.get("exclude_modules")
    saved = saved_names(cfg)
    return [
        p for p in paths
        if p and not (exclude and _name_hit(p, exclude)) and not in_saved_module(p, saved)
        and _target_hit(p, cfg)
    ]


def saved_paths(paths: Iterable[str], names: Sequence[str]) -> list[str]:
    """The paths PEFT wraps as modules to save."""
    return [p for p in paths if p and any(p.endswith(n) for n in names)]


def _peft_leaf(leaf: str, base: nn.Module) -> str:
    if isinstance(base, nn.Embedding) and leaf in ("lora_A", "lora_B"):
        return f"lora_embedding_{leaf[-1]}"
    return {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight",
            "magnitude": "lora_magnitude_vector", IA3_LEAF: IA3_PEFT}.get(leaf, leaf)


def key_map(kit: AdapterKit, ours: dict[str, torch.Tensor],
            modules: Mapping[str, nn.Module] | None = None) -> dict[str, tuple[str, torch.Size]]:
    """Our tensor key -> (PEFT key, shape in the PEFT file), for every tensor in ``ours``
    (named as :func:`adapterkit.io.kitio.adapter_tensors` names them); ``modules`` (the
    record's, by host) tells IA3's feedforward vectors from the others."""
    out: dict[str, tuple[str, torch.Size]] = {}
    for key, t in ours.items():
        if key.startswith(HEAD):
            out[key] = (PREFIX + key[len(HEAD):], t.shape)
            continue
        host, leaf = key.rsplit(".", 1)
        base = kit.model.get_submodule(host)
        conv_b = isinstance(base, nn.Conv2d) and leaf == "lora_B"
        shape = torch.Size((*t.shape, 1, 1)) if conv_b else t.shape  # PEFT: a 1x1 conv
        if leaf == IA3_LEAF:
            ff = getattr((modules or {}).get(host), "feedforward", None)
            if ff is None:
                raise ValueError(f"{key}: the IA3 module is needed to name the tensor")
            shape = torch.Size((1, t.numel()) if ff else (t.numel(), 1))
        out[key] = (f"{PREFIX}{host}.{_peft_leaf(leaf, base)}", shape)
    return out


def to_peft(tensors: dict[str, torch.Tensor],
            keys: dict[str, tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    """Our tensors renamed and reshaped the PEFT way (IA3: ``l = ia3_offset + 1``)."""
    out = {}
    for k, t in tensors.items():
        name, shape = keys[k]
        out[name] = t.reshape(shape) + 1 if name.endswith(f".{IA3_PEFT}") else t.reshape(shape)
    return out


def from_peft(found: dict[str, torch.Tensor], keys: dict[str, tuple[str, torch.Size]],
              ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File tensors (already checked against ``to_peft(ours, keys)``) renamed our way
    (IA3: ``ia3_offset = l - 1``, computed in the module's dtype)."""
    out = {}
    for k, (peft_key, _) in keys.items():
        t = found[peft_key].reshape(ours[k].shape)
        out[k] = t.to(ours[k].dtype) - 1 if k.endswith(f".{IA3_LEAF}") else t
    return out
