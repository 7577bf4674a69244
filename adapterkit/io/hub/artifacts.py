"""The hub's derived artifacts on the client: Arrow prototypes of many adapters in one request
(without their weights) and "similar adapters" by weight embedding.

``POST /api/adapterkit/prototypes`` answers each repo with a base64 safetensors file (one
float32 (in,) vector per site, keyed by the host module path; the sigmas in its metadata) and its
SHA-256, which :func:`fetch_prototypes` checks. A repo the token cannot read answers as a missing
one. :func:`attach_prototypes` puts a commit's prototypes beside its pulled files as
``arrow_prototypes.safetensors``, which ``kit.load`` registers for Arrow (see
``adapterkit.compose.arrow``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import HubClientError, IntegrityError, RepoNotFoundError, RevisionNotFoundError

if TYPE_CHECKING:
    from .client import HubClient

PROTOTYPES_PATH = "/api/adapterkit/prototypes"


@dataclass
class HubPrototypes:
    """The prototypes of one adapter at one commit (``available`` False: the hub has none)."""

    repo: str
    revision: str
    commit: str
    available: bool
    sha256: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self.data) if self.data else {}

    def sigmas(self) -> dict[str, float]:
        if not self.data:
            return {}
        (n,) = struct.unpack("<Q", self.data[:8])
        meta = json.loads(self.data[8:8 + n]).get("__metadata__") or {}
        return {k: float(v) for k, v in json.loads(meta.get("sigmas", "{}")).items()}


def _parse(item: dict[str, Any]) -> HubPrototypes:
    if "error" in item:
        cls = RevisionNotFoundError if item["error"] == "RevisionNotFound" else RepoNotFoundError
        raise cls(f"{item.get('repo')}: {item.get('message') or item['error']}", 404, str(item["error"]))
    data = base64.b64decode(item["prototypes"]) if item.get("available") else None
    if data is not None and hashlib.sha256(data).hexdigest() != item.get("sha256"):
        raise IntegrityError(f"{item['repo']}@{item['commit'][:12]}: the prototypes the hub sent do not "
                             "hash to the SHA-256 it announced")
    return HubPrototypes(str(item["repo"]), str(item["revision"]), str(item["commit"]),
                         bool(item.get("available")), item.get("sha256"), data)


def fetch_prototypes(client: HubClient, repos: list[str]) -> dict[str, HubPrototypes]:
    """``{item: prototypes}`` for each ``owner/name[@revision]`` in ``repos``, in one request
    per 256. A repo the token cannot read (or a missing one) raises RepoNotFoundError naming it:
    nothing is returned for any of them."""
    out: dict[str, HubPrototypes] = {}
    for i in range(0, len(repos), 256):
        chunk = repos[i:i + 256]
        reply = client.http.call("POST", PROTOTYPES_PATH, json_body={"repos": chunk}).json()
        for item, answer in zip(chunk, reply["results"]):
            out[item] = _parse(answer)
    return out


def prototypes(repos: list[str], endpoint: str | None = None, token: str | None = None,
               cache_dir: str | os.PathLike | None = None) -> dict[str, HubPrototypes]:
    """The Arrow prototypes of many hub adapters without their weights (see the module doc)."""
    from .client import HubClient

    return fetch_prototypes(HubClient(endpoint, token, cache_dir), list(repos))


def similar(repo: str, endpoint: str | None = None, token: str | None = None, revision: str = "main",
            limit: int = 10) -> list[dict[str, Any]]:
    """The adapters the token can read whose weight embeddings are closest to ``repo``'s:
    ``[{"repo_id", "score"}]``, best first (cosine similarity)."""
    from .client import HubClient
    from .http import quote

    client = HubClient(endpoint, token)
    path = f"/api/adapterkit/similar/{repo}?revision={quote(revision)}&limit={int(limit)}"
    return list(client.http.call("GET", path).json()["similar"])


def attach_prototypes(client: HubClient, repo: str, commit: str,
                      files: dict[str, str]) -> dict[str, str]:
    """``files`` (path -> sha256 of a pulled commit) plus the hub's prototypes of that commit
    as ``arrow_prototypes.safetensors``, cached like any blob; unchanged when the commit holds
    that file itself, when the hub has none, or when the hub has no prototypes endpoint."""
    from ...compose.arrow import PROTOTYPES_FILE

    if PROTOTYPES_FILE in files or "adapter_config.json" not in files:
        return files
    try:
        found = fetch_prototypes(client, [f"{repo}@{commit}"])[f"{repo}@{commit}"]
    except HubClientError as exc:
        if exc.status in (404, 405):  # an older hub, or no artifacts route
            return files
        raise
    if not found.available or found.data is None or found.sha256 is None:
        return files
    if not client.cache.verified(found.sha256, len(found.data)):
        writer = client.cache.writer()
        writer.write(found.data)
        writer.commit(f"{repo}@{commit[:12]}/{PROTOTYPES_FILE}", found.sha256, len(found.data))
    return {**files, PROTOTYPES_FILE: found.sha256}

