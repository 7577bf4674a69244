"""Metadata extracted from an adapter commit at upload, never typed by hand.

From ``adapter_config.json`` (adapterkit's format or PEFT's): the method, rank, sites, base
``model_type``, base fingerprint; from the safetensors headers: the parameter count; from the
README's YAML front matter: base model, tasks, language, licence and tags. A safetensors file's
*payload* hash is the SHA-256 of its tensor bytes alone (everything after the header), so two
files that differ only in their header show the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from typing import Any

MAX_HEADER = 100 << 20
WEIGHT_SUFFIX = ".safetensors"


class PayloadHasher:
    """Fed a file's bytes in order; :meth:`digest` is the SHA-256 of what follows a safetensors
    header, or None when the bytes do not start like a safetensors file."""

    def __init__(self) -> None:
        self.head = b""
        self.skip: int | None = None  # header length plus 8: where the payload starts
        self.seen = 0
        self.hash = hashlib.sha256()
        self.valid = True

    def update(self, chunk: bytes) -> None:
        if not self.valid:
            return
        before = self.seen
        self.seen += len(chunk)
        if self.skip is None:
            self.head += chunk[:8 - len(self.head)]
            if len(self.head) < 8:
                return
            (n,) = struct.unpack("<Q", self.head)
            if n == 0 or n > MAX_HEADER:
                self.valid = False
                return
            self.skip = 8 + n
        start = self.skip - before
        if start < len(chunk):
            self.hash.update(chunk[max(start, 0):])

    def digest(self) -> str | None:
        return self.hash.hexdigest() if self.valid and self.skip is not None else None


def payload_sha256(data: bytes) -> str | None:
    hasher = PayloadHasher()
    hasher.update(data)
    return hasher.digest()


def safetensors_header(head: bytes) -> dict[str, Any] | None:
    """The JSON header of a safetensors file from its first bytes, or None."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > MAX_HEADER or len(head) < 8 + n:
        return None
    try:
        header = json.loads(head[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


def tensor_counts(header: dict[str, Any]) -> tuple[int, int]:
    """(tensors, parameters) of a safetensors header."""
    tensors = params = 0
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        shape = info.get("shape")
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            tensors += 1
            params += math.prod(shape)
    return tensors, params


def front_matter(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the README's YAML front matter, or None; a parse error, or None)."""
    import yaml

    if not text.startswith("---"):
        return None, None
    end = text.find("\n---", 3)
    if end < 0:
        return None, "the front matter opened by '---' is never closed"
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError as exc:
        return None, f"the front matter is not valid YAML: {exc}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"the front matter must be a mapping, found {type(data).__name__}"
    return data, None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items]


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The adapter fields of an adapterkit or PEFT ``adapter_config.json``."""
    if config.get("format") == "adapterkit":
        base = _as_dict(config.get("base"))
        method_cfg = _as_dict(config.get("config"))
        sites = [s[0] if isinstance(s, list) and s else s for s in base.get("sites") or []]
        return {"format": "adapterkit", "method": config.get("method"),
                "rank": method_cfg.get("r", method_cfg.get("rank")), "sites": sites,
                "base_model_type": base.get("model_type"), "base_fingerprint": base.get("fingerprint"),
                "heads": _as_list(config.get("heads"))}
    if "peft_type" in config:
        targets = config.get("target_modules")
        return {"format": "peft", "method": str(config.get("peft_type", "")).lower(),
                "rank": config.get("r"), "sites": _as_list(targets) if targets is not None else [],
                "base_model": config.get("base_model_name_or_path"), "task_type": config.get("task_type"),
                "base_model_type": None, "base_fingerprint": None}
    return {"format": None}


def from_card(card: dict[str, Any]) -> dict[str, Any]:
    tasks = _as_list(card.get("pipeline_tag")) + _as_list(card.get("tasks"))
    return {"base_model": card.get("base_model"), "tasks": tasks, "language": _as_list(card.get("language")),
            "license": card.get("license"), "tags": _as_list(card.get("tags")),
            "library_name": card.get("library_name")}


Reader = Callable[[str, int], bytes]  # (blob sha256, at most this many bytes) -> the first bytes


def extract(files: dict[str, tuple[str, int]], read: Reader,
            payloads: dict[str, str | None]) -> dict[str, Any]:
    """Metadata of a commit whose tree maps each path to (blob sha256, size)."""
    meta: dict[str, Any] = {"files": len(files), "bytes": sum(size for _, size in files.values()),
                            "sizes": {p: size for p, (_, size) in files.items()}}
    if "adapter_config.json" in files:
        blob, size = files["adapter_config.json"]
        try:
            config = json.loads(read(blob, min(size, 16 << 20)))
            meta["adapter"] = from_config(config) if isinstance(config, dict) else {"format": None}
        except (ValueError, UnicodeDecodeError):
            meta["adapter"] = {"format": None, "error": "adapter_config.json is not valid JSON"}
    if "README.md" in files:
        blob, size = files["README.md"]
        card, error = front_matter(read(blob, min(size, 4 << 20)).decode("utf-8", "replace"))
        meta["card"] = from_card(card) if card else {}
        if error:
            meta["card_error"] = error
    weights: dict[str, Any] = {}
    for path, (blob, _size) in files.items():
        if not path.endswith(WEIGHT_SUFFIX):
            continue
        first = read(blob, 8)
        n = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
        header = safetensors_header(read(blob, 8 + n)) if 0 < n <= MAX_HEADER else None
        tensors, params = tensor_counts(header) if header else (0, 0)
        weights[path] = {"sha256": blob, "payload_sha256": payloads.get(blob), "tensors": tensors,
                         "parameters": params}
    if weights:
        meta["weights"] = weights
        meta["parameters"] = sum(w["parameters"] for w in weights.values())
    return meta


def tags(meta: dict[str, Any]) -> list[str]:
    """Search tags derived from a commit's metadata (beside the README's own tags)."""
    adapter, card = meta.get("adapter") or {}, meta.get("card") or {}
    out = list(card.get("tags") or [])
    for key, value in (("method", adapter.get("method")), ("model_type", adapter.get("base_model_type")),
                       ("base_model", card.get("base_model") or adapter.get("base_model")),
                       ("license", card.get("license"))):
        if value:
            out.append(f"{key}:{value}")
    out += [f"language:{x}" for x in card.get("language") or []]
    out += [f"task:{x}" for x in card.get("tasks") or []]
    out += [f"weights:{w['payload_sha256']}" for w in (meta.get("weights") or {}).values()
            if w.get("payload_sha256")]
    if card.get("library_name"):
        out.append(str(card["library_name"]))
    return sorted(set(out))
