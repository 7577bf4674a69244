"""The native checkpoint: ``adapter_config.json`` plus ``adapter.safetensors``.

The JSON records ``format``/``format_version``, the adapterkit version, the adapter name, the
method config, the base identity and the trained heads. Pickle is never read or written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import LoadError

FORMAT = "adapterkit"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_checkpoint(directory: str | os.PathLike, meta: dict[str, Any],
                     tensors: dict[str, torch.Tensor]) -> Path:
    """Write both files; each appears whole or not at all."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    _atomic_write(out / WEIGHTS_FILE,
                  lambda p: save_file(flat, p, metadata={"format": FORMAT,
                                                         "format_version": str(FORMAT_VERSION)}))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(text))
    return out


def _listing(directory: Path) -> str:
    if not directory.is_dir():
        return f"{directory} is not a directory"
    names = sorted(p.name for p in directory.iterdir())
    return f"{directory} holds {names}"


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LoadError(f"missing {path.name}: {_listing(path.parent)}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"{path} is not valid JSON ({exc}); the file is corrupt or truncated") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LoadError(f"missing {path.name}: {_listing(path.parent)}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = path.stat().st_size
        raise LoadError(
            f"{path} ({size} bytes) is not a readable safetensors file: {exc}; "
            "it is corrupt or truncated"
        ) from None


def detect_format(directory: str | os.PathLike) -> str:
    """``"adapterkit"``, ``"peft"`` or ``"adapterhub"``, from the files in ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        raise LoadError(f"no adapter directory at {d}")
    cfg = d / CONFIG_FILE
    if not cfg.is_file():
        raise LoadError(f"missing {CONFIG_FILE}: {_listing(d)}")
    meta = read_json(cfg)
    if meta.get("format") == FORMAT:
        return FORMAT
    if "peft_type" in meta:
        return "peft"
    if "config" in meta and ("model_class" in meta or "hidden_size" in meta):
        return "adapterhub"
    raise LoadError(f"{cfg} is neither an adapterkit, PEFT nor AdapterHub adapter config")


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON metadata and the tensors of a native checkpoint, validated for form."""
    d = Path(directory)
    meta = read_json(d / CONFIG_FILE)
    if meta.get("format") != FORMAT:
        raise LoadError(f"{d / CONFIG_FILE} is not an adapterkit checkpoint (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LoadError(
            f"{d} has format_version {version!r}; this adapterkit reads up to {FORMAT_VERSION}"
        )
    for key in ("name", "config"):
        if key not in meta:
            raise LoadError(f"{d / CONFIG_FILE} lacks the {key!r} entry")
    return meta, read_safetensors(d / WEIGHTS_FILE)
