"""The search document of a commit: its title, summary (what is embedded), full-text body, tags
and what the adapter needs of a base model.

The summary is ``title; description; tags; base; task; language``, the text the embedding is
computed from. ``requires`` maps each host module the adapter attaches to onto the weight shape
it was made for: from ``base.shapes`` of an adapterkit ``adapter_config.json``, or from the
LoRA tensor shapes in the safetensors headers of a PEFT checkpoint (``lora_A`` is ``[r, in]``,
``lora_B`` is ``[out, r]``, so the host's weight is ``[out, in]``); a host whose shape cannot be
read maps to None (the host must exist, any shape).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..metadata import safetensors_header, tags

DESCRIPTION_CHARS = 600
BODY_CHARS = 8000
Reader = Callable[[str, int], bytes]  # (blob sha256, at most this many bytes) -> the first bytes
_PEFT_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<host>.+)\.lora_(?P<part>A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$")


@dataclass
class Document:
    title: str
    summary: str
    body: str
    tags: list[str]
    requires: dict[str, list[int] | None] | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def requires_hash(self) -> str | None:
        if not self.requires:
            return None
        text = json.dumps(self.requires, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def split_card(text: str) -> tuple[str, str]:
    """(first heading, the prose after the front matter) of a README."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        text = text[end + 4:] if end >= 0 else ""
    heading = ""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not heading:
            heading = stripped.lstrip("#").strip()
            continue
        if stripped.startswith(("```", "|", "<")):
            continue
        lines.append(stripped.lstrip("#*-> ").strip())
    prose = " ".join(x for x in lines if x)
    return heading, re.sub(r"\s+", " ", prose).strip()


def _shape(value: Any) -> list[int] | None:
    if isinstance(value, list) and value and all(isinstance(d, int) for d in value):
        return [int(d) for d in value]
    return None


def native_requires(config: dict[str, Any]) -> dict[str, list[int] | None]:
    base: dict[str, Any] = config["base"] if isinstance(config.get("base"), dict) else {}
    shapes: dict[str, Any] = base["shapes"] if isinstance(base.get("shapes"), dict) else {}
    hosts = [s[0] if isinstance(s, list) and s else s for s in base.get("sites") or []]
    out: dict[str, list[int] | None] = {h: None for h in hosts if isinstance(h, str)}
    out.update({str(h): _shape(v) for h, v in shapes.items()})
    return out


def peft_requires(header: dict[str, Any]) -> dict[str, list[int] | None]:
    """Host -> weight shape from the LoRA tensors of a PEFT safetensors header."""
    dims: dict[str, dict[str, int]] = {}
    for key, info in header.items():
        m = _LORA.match(key.removeprefix(_PEFT_PREFIX))
        shape = _shape(info.get("shape")) if isinstance(info, dict) else None
        if m is None or shape is None or len(shape) != 2:
            continue
        host, part = m.group("host"), m.group("part")
        d = dims.setdefault(host, {})
        if part == "A":
            d["in"] = shape[1]
        elif part == "B":
            d["out"] = shape[0]
        elif part == "embedding_A":
            d["out"] = shape[1]  # an embedding's weight is [num_embeddings, dim]
        else:
            d["in"] = shape[0]
    return {h: [d["out"], d["in"]] if "out" in d and "in" in d else None for h, d in dims.items()}


def requirements(files: dict[str, tuple[str, int]], read: Reader) -> dict[str, list[int] | None] | None:
    config = _json(files, "adapter_config.json", read)
    if isinstance(config, dict) and config.get("format") == "adapterkit":
        return native_requires(config) or None
    out: dict[str, list[int] | None] = {}
    for path, (blob, _size) in sorted(files.items()):
        if path.endswith(".safetensors"):
            first = read(blob, 8)
            n = int.from_bytes(first, "little") if len(first) == 8 else 0
            header = safetensors_header(read(blob, 8 + n)) if 0 < n <= 100 << 20 else None
            out.update(peft_requires(header or {}))
    return out or None


def _json(files: dict[str, tuple[str, int]], path: str, read: Reader) -> Any:
    if path not in files:
        return None
    blob, size = files[path]
    try:
        return json.loads(read(blob, min(size, 16 << 20)))
    except (ValueError, UnicodeDecodeError):
        return None


def _readme(files: dict[str, tuple[str, int]], read: Reader) -> str:
    if "README.md" not in files:
        return ""
    blob, size = files["README.md"]
    return read(blob, min(size, 1 << 20)).decode("utf-8", "replace")


def compose(repo_name: str, meta: dict[str, Any], readme: str,
            requires: dict[str, list[int] | None] | None) -> Document:
    """The document of a repo from its metadata and README text."""
    adapter, card = meta.get("adapter") or {}, meta.get("card") or {}
    heading, prose = split_card(readme)
    name = repo_name.split("/")[-1]
    title = heading or name
    description = prose[:DESCRIPTION_CHARS]
    all_tags = tags(meta)
    plain = [t for t in all_tags if ":" not in t]
    base = card.get("base_model") or adapter.get("base_model") or adapter.get("base_model_type") or ""
    tasks, languages = card.get("tasks") or [], card.get("language") or []
    summary = "; ".join([title, description, ", ".join(plain), str(base), ", ".join(tasks),
                         ", ".join(languages)])
    words = re.sub(r"[/_.\-]+", " ", repo_name)
    extra = [str(adapter.get("method") or ""), str(card.get("license") or ""),
             str(adapter.get("base_model_type") or "")]
    body = " ".join([repo_name, words, title, prose[:BODY_CHARS], " ".join(plain), str(base),
                     " ".join(tasks), " ".join(languages), *extra])
    small = {"method": adapter.get("method"), "rank": adapter.get("rank"), "format": adapter.get("format"),
             "base_model": card.get("base_model") or adapter.get("base_model"),
             "model_type": adapter.get("base_model_type"), "tasks": tasks, "language": languages,
             "license": card.get("license"), "tags": card.get("tags") or [],
             "parameters": meta.get("parameters"), "description": description}
    return Document(title[:500], summary, body, all_tags, requires, small)


def document(repo_name: str, meta: dict[str, Any], files: dict[str, tuple[str, int]],
             read: Reader) -> Document:
    """The document of a commit whose tree maps each path to (blob sha256, size)."""
    return compose(repo_name, meta, _readme(files, read), requirements(files, read))
