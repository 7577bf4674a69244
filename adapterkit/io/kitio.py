"""Saving and loading the adapters of an :class:`~adapterkit.kit.AdapterKit`."""

from __future__ import annotations

import copy
import hashlib
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..core.base import SLOT
from ..core.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    detect_format,
    read_checkpoint,
    refuse_non_finite,
    write_checkpoint,
)
from ..core.distributed import full_tensor, is_main_process
from ..core.hosts import weight_shape
from ..core.records import head_state, plain_state
from ..core.sites import model_type_of
from ..core.version import __version__
from ..errors import AdapterError, AdapterNameError, ConfigError, LoadError
from ..methods.configs import config_from_dict, config_to_dict
from .base_check import base_problems, host_shapes

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from ..kit import AdapterKit

HEAD = "head::"


def fingerprint(kit: AdapterKit, paths: list[str]) -> str:
    """Hash of the names and shapes of the weights at ``paths``: the base identity."""
    h = hashlib.sha256()
    for path in sorted(paths):
        shape = weight_shape(kit.model.get_submodule(path))  # logical: (out, in) when quantized
        h.update(f"{path}:{shape};".encode())
    return h.hexdigest()[:16]


def adapter_tensors(kit: AdapterKit, record: AdapterRecord) -> dict[str, torch.Tensor]:
    """The adapter's and its heads' tensors by checkpoint key; sharded (FSDP2) tensors are
    gathered whole, which every rank must take part in."""
    out = {}
    for host, module in record.modules.items():
        for key, t in plain_state(module).items():
            out[f"{host}.{key}"] = full_tensor(t)
    for path in record.heads:
        for key, t in head_state(kit.model.get_submodule(path)).items():
            out[f"{HEAD}{path}.{key}"] = full_tensor(t.detach())
    return out


def save_adapter(kit: AdapterKit, name: str, directory: str | os.PathLike, format: str) -> None:
    save_record(kit, kit.record(name), directory, format)


def save_record(kit: AdapterKit, record: AdapterRecord, directory: str | os.PathLike,
                format: str) -> None:
    """Write ``record``, which need not be attached (a converted copy of an adapter)."""
    name = record.name
    if format == "peft":
        from .peft import save_peft

        save_peft(kit, record, Path(directory))
        return
    if format != "adapterkit":
        raise ValueError(f"unknown format {format!r}; use 'adapterkit' or 'peft'")
    meta: dict[str, Any] = {
        "adapterkit_version": __version__,
        "name": name,
        "method": record.spec.name,
        "config": config_to_dict(record.config),
        "base": {
            "model_type": model_type_of(kit.model),
            "layout": kit.layout.family if kit.layout else None,
            "fingerprint": fingerprint(kit, [s.host for s in record.sites]),
            "shapes": host_shapes(kit, [s.host for s in record.sites]),
            "sites": [[s.host, s.input] for s in record.sites],
        },
        "heads": list(record.heads),
        **record.extra,
    }
    tensors = adapter_tensors(kit, record)  # under torch.distributed: on every rank
    if is_main_process():
        write_checkpoint(directory, meta, tensors)


def _mismatches(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    problems = []
    for key in expected.keys() - found.keys():
        problems.append(f"missing tensor {key} (expected shape {tuple(expected[key].shape)})")
    for key in found.keys() - expected.keys():
        problems.append(f"unexpected tensor {key} (shape {tuple(found[key].shape)})")
    for key in expected.keys() & found.keys():
        want, got = expected[key], found[key]
        if want.shape != got.shape:
            problems.append(f"{key}: file has shape {tuple(got.shape)}, model needs {tuple(want.shape)}")
        elif got.is_floating_point() != want.is_floating_point():
            problems.append(f"{key}: file has dtype {got.dtype}, model needs {want.dtype}")
    return sorted(problems)


#: meta twins by model, each with the structure it was copied from: loading many adapters (a
#: server's start-up) copies the module tree once, not once per adapter (a copy that would also
#: grow with every adapter already attached)
_TWINS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Any]] = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple:
    """The base model's module names, classes and parameter shapes, adapter slots left out."""
    return tuple((n, type(m), tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
                 for n, m in model.named_modules() if SLOT not in n.split("."))


def _meta_twin(kit: AdapterKit) -> AdapterKit | None:
    """A kit on a copy of the model whose parameters and buffers are meta tensors (shapes, no
    storage), or None where the model does not copy so; reused while the base model's
    structure is unchanged (planning on it changes nothing)."""
    structure = _structure(kit.model)
    hit = _TWINS.get(kit.model)
    if hit is not None and hit[0] == structure and type(hit[1]) is type(kit):
        return cast("AdapterKit", hit[1])
    twin = _copy_meta(kit)
    _TWINS[kit.model] = (structure, twin)
    return twin


def _copy_meta(kit: AdapterKit) -> AdapterKit | None:
    memo: dict[int, Any] = {}
    try:
        for t in (*kit.model.parameters(), *kit.model.buffers()):
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
        return type(kit)(copy.deepcopy(kit.model, memo))
    except Exception:  # an attribute that does not copy: no twin, and no size check
        return None


#: adapters up to this many values that do not fit their weights file are built, so that every
#: mismatch is reported tensor by tensor; larger ones are refused before they are built
BUILD_TO_REPORT = 2**24


def _check_size(kit: AdapterKit, name: str, config: Any, source: Path, values: int) -> None:
    """Refuse a config whose adapter holds more values than both the weights file (``values``)
    and ``BUILD_TO_REPORT``, by planning it on a meta twin of the model, before anything of its
    size is allocated."""
    twin = _meta_twin(kit)
    if twin is None:
        return
    try:
        probe = twin.plan(name, config)
    except Exception:  # a method that does not build on meta tensors; the real plan decides
        return
    need = sum(t.numel() for m in probe.modules.values() for t in m.state_dict().values())
    if need > max(values, BUILD_TO_REPORT):
        raise LoadError(f"{source}: the adapter it describes holds {need} values, more than the "
                        f"{values} of its weights file (a corrupt config, or one for a larger "
                        "model)")


def plan_loaded(kit: AdapterKit, name: str, config: Any, source: Path, from_file: bool,
                values: int) -> AdapterRecord:
    """``kit.plan(name, config)`` for a loader whose config comes from the file ``source`` (and
    the name too when ``from_file``) and whose weights file holds ``values`` numbers. A name
    already taken, or a bad name the caller gave, raises AdapterNameError, a config that fails
    once built ConfigError; any other failure (a bad name in the file, targets this model lacks,
    an adapter larger than the weights file) raises LoadError, each naming ``source``."""
    _check_size(kit, name, config, source, values)
    try:
        return kit.plan(name, config)
    except AdapterNameError as exc:
        if name in kit.names or not from_file:
            raise AdapterNameError(f"cannot load {source.parent}: {exc}") from None
        raise LoadError(f"{source}: {exc}") from None
    except ConfigError as exc:  # a config that fails once built (EigenLoRA: its basis file)
        raise ConfigError(f"{source}: {exc}") from None
    except (AdapterError, ValueError) as exc:
        raise LoadError(f"{source}: the adapter it describes does not fit this model: {exc}") from None
    except (TypeError, OverflowError, RuntimeError, MemoryError) as exc:  # sizes torch refuses
        raise LoadError(f"{source}: building the adapter it describes failed "
                        f"({type(exc).__name__}: {str(exc)[:300]})") from None


def _explosive(config: Any) -> str | None:
    """The first string in a JSON config that is a regular expression whose matching time can
    explode (targets are matched against every module path), or None."""
    from .peft_keys import nested_repeat

    todo = [config]
    while todo:
        value = todo.pop()
        if isinstance(value, str) and nested_repeat(value):
            return value
        if isinstance(value, dict):
            todo += value.values()
        elif isinstance(value, list):
            todo += value
    return None


def _plan_from_meta(kit: AdapterKit, meta: dict[str, Any], name: str | None, directory: Path,
                    tensors: dict[str, torch.Tensor]) -> AdapterRecord:
    source = directory / CONFIG_FILE
    pattern = _explosive(meta["config"])
    if pattern is not None:
        raise LoadError(f"{source}: the pattern {pattern!r:.100} repeats a group that holds a repeat "
                        "or an alternative; matching it can take exponential time")
    try:
        config = config_from_dict(meta["config"])
        if hasattr(config, "relocated"):  # a config naming a file (EigenLoRA's basis) finds it
            config = config.relocated(directory)
    except (ConfigError, TypeError, ValueError) as exc:
        raise LoadError(f"{source}: bad method config: {exc}") from None
    values = sum(t.numel() for t in tensors.values())
    record = plan_loaded(kit, name or meta["name"], config, source, name is None, values)
    heads = meta.get("heads", [])
    missing = [h for h in heads if h not in kit.finder().modules]
    if missing:
        raise LoadError(f"{source}: the adapter has trained heads {missing} that this model lacks")
    record.heads = tuple(heads)
    return record


def _misfit(d: Path, problems: list[str], meta: dict[str, Any], now: str | None) -> LoadError:
    base = meta.get("base")
    was = base.get("model_type") if isinstance(base, dict) else None
    note = f"; it was saved from model_type {was!r}, this model is {now!r}" if was != now else ""
    return LoadError(f"{d / WEIGHTS_FILE} does not fit this model ({len(problems)} problem(s){note}):"
                     "\n  " + "\n  ".join(problems))


def load_adapter(kit: AdapterKit, directory: str | os.PathLike, name: str | None) -> str:
    d = Path(directory)
    fmt = detect_format(d)
    if fmt == "peft":
        from .peft import load_peft

        return load_peft(kit, d, name)
    if fmt == "adapterhub":
        from .adapterhub import load_adapterhub

        return load_adapterhub(kit, d, name)
    if fmt != "adapterkit":
        raise LoadError(f"{d}: loading the {fmt} format is not supported")
    meta, tensors = read_checkpoint(d)
    if "quantization" in meta:
        from ..ops.quantize.model import dequantize_checkpoint

        tensors = dequantize_checkpoint(meta, tensors, str(d / WEIGHTS_FILE))
    refuse_non_finite(tensors, d / WEIGHTS_FILE)
    record = _plan_from_meta(kit, meta, name, d, tensors)
    problems = _mismatches(adapter_tensors(kit, record), tensors)
    if problems:
        raise _misfit(d, problems, meta, model_type_of(kit.model))
    base = base_problems(kit, meta)  # tensors that fit a base of other shapes, before attaching
    if base:
        raise LoadError(f"{d / CONFIG_FILE} was saved from another base model:\n  "
                        + "\n  ".join(base))
    install(kit, record, tensors)
    return record.name


def install(kit: AdapterKit, record: AdapterRecord, tensors: dict[str, torch.Tensor]) -> None:
    """Copy validated tensors into the planned modules and heads, then attach."""
    with torch.no_grad():
        for host, module in record.modules.items():
            for key, t in module.state_dict(keep_vars=True).items():
                t.copy_(tensors[f"{host}.{key}"])
        for path in record.heads:
            for key, t in head_state(kit.model.get_submodule(path)).items():
                t.copy_(tensors[f"{HEAD}{path}.{key}"])
    kit.attach(record)
