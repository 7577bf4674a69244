"""``kit.push``: save one adapter (adapterkit's format or PEFT's), write a model card, push."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .client import HubClient

if TYPE_CHECKING:
    from ...kit import AdapterKit


def base_model_id(kit: AdapterKit) -> str | None:
    config = getattr(kit.model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else None


def model_card(kit: AdapterKit, name: str, format: str) -> str:
    """A README with the YAML front matter the hub (and the Hugging Face ecosystem) reads."""
    method = kit.record(name).spec.name
    base = base_model_id(kit)
    tags = ["adapterkit", method] + ([f"base_model:adapter:{base}"] if base and format == "peft" else [])
    lines = ["---", f"library_name: {'peft' if format == 'peft' else 'adapterkit'}"]
    if base:
        lines.append(f"base_model: {base}")
    lines += ["tags:"] + [f"- {t}" for t in tags] + ["---", "", f"# {name}", "",
                                                     f"A {method} adapter saved by adapterkit "
                                                     f"({format} format).", ""]
    return "\n".join(lines)


def push_adapter(kit: AdapterKit, name: str, repo: str, *, token: str | None = None,
                 endpoint: str | None = None, private: bool = False, format: str = "adapterkit",
                 branch: str = "main", message: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> str:
    """Push adapter ``name`` to ``repo``; returns the commit id."""
    client = HubClient(endpoint, token, cache_dir)
    kit.record(name)  # an unknown name fails before anything is written
    with tempfile.TemporaryDirectory(prefix="adapterkit-push-") as tmp:
        out = Path(tmp)
        kit.save(name, out, format=format)
        (out / "README.md").write_text(model_card(kit, name, format))
        return client.push_folder(out, repo, branch=branch, private=private,
                                  message=message or f"Push adapter {name} ({format} format)")
