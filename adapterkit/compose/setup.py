"""Setups on disk: several adapters, their fusion layers and the active composition together.

``directory/setup.json`` names one subdirectory per adapter (each a native checkpoint, see
docs/format.md) or its source URL (``hub://owner/repo@commit``, loaded with the caller's token),
fusion layers after the adapters they fuse, and holds the composition as JSON
(``adapterkit.compose.blocks.to_json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.base import MethodKind
from ..core.checkpoint import _atomic_write, read_json
from ..errors import AdapterError, LoadError
from .blocks import Composition, from_json, to_json

if TYPE_CHECKING:
    from ..kit import AdapterKit

SETUP_FILE = "setup.json"
FORMAT = "adapterkit-setup"
FORMAT_VERSION = 1


def save_setup(kit: AdapterKit, directory: str | os.PathLike,
               names: Any = None, sources: dict[str, str] | None = None) -> Path:
    out = Path(directory)
    chosen = list(names) if names is not None else kit.names
    for name in chosen:
        kit.record(name)
    # fusion layers and Mixture routers load after the adapters they fuse or route
    chosen.sort(key=lambda n: kit.record(n).spec.kind in (MethodKind.FUSION, MethodKind.ROUTER))
    out.mkdir(parents=True, exist_ok=True)
    sources = dict(sources or {})
    unknown = sorted(set(sources) - set(chosen))
    if unknown or not all(isinstance(v, str) and "://" in v for v in sources.values()):
        raise AdapterError(f"save_setup sources map adapter names of the setup to URLs (such as "
                           f"hub://owner/repo@commit); got {sources!r}")
    for name in chosen:
        if name not in sources:
            kit.save(name, out / name)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "adapters": [{"name": n, "source": sources[n]} if n in sources else {"name": n, "path": n}
                         for n in chosen],
            "composition": to_json(kit.composition)}
    text = json.dumps(meta, indent=2) + "\n"
    _atomic_write(out / SETUP_FILE, lambda p: Path(p).write_text(text))
    return out


def load_setup(kit: AdapterKit, directory: str | os.PathLike, **options: Any) -> Composition | None:
    d = Path(directory)
    meta = read_json(d / SETUP_FILE)
    if meta.get("format") != FORMAT or not isinstance(meta.get("adapters"), list):
        raise LoadError(f"{d / SETUP_FILE} is not an adapterkit setup")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise LoadError(f"{d / SETUP_FILE} has format_version {meta['format_version']}; "
                        f"this adapterkit reads up to {FORMAT_VERSION}")
    loaded: list[str] = []
    try:
        comp = from_json(meta.get("composition"))
        for entry in meta["adapters"]:
            if "source" in entry:  # a URL (hub://...): the token in options must read it
                loaded.append(kit.load(str(entry["source"]), name=entry["name"], **options))
            else:
                loaded.append(kit.load(d / entry["path"], name=entry["name"]))
        kit.activate(comp)
    except (AdapterError, KeyError, TypeError) as exc:
        for name in reversed(loaded):  # leave the model as it was
            kit.remove(name)
        if isinstance(exc, AdapterError):
            raise
        raise LoadError(f"{d / SETUP_FILE}: bad adapter entry ({exc})") from None
    return comp
