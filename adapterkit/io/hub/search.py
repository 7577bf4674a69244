"""Searching a hub from Python: :func:`search` (``adapterkit.hub.search``, ``kit.search`` and
``adapterkit search`` call it) and :func:`model_fingerprint`, what "compatible with this model"
sends.

``search(query, endpoint=..., token=..., compatible_with=model, limit=...)`` posts to the hub's
``/api/models/search`` and returns :class:`SearchRecord` objects (``repo_id``, ``score``,
``metadata``, ``why``). ``compatible_with`` takes a model (``torch.nn.Module``), a kit (its
model is used) or a fingerprint dict; the hub then returns only adapters whose host modules and
weight shapes fit that model. The mode defaults to hybrid ranking; a hub without the embedding
model answers semantic and hybrid queries with ``SemanticSearchUnavailable``, and when no mode
was asked for this client then searches by text alone, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import endpoint_for, token_for
from .errors import HubClientError
from .http import HubHTTP


@dataclass
class SearchRecord:
    """One hit: the repo, its score (higher is better) and the metadata of its head commit."""

    repo_id: str
    score: float
    metadata: dict[str, Any]
    why: dict[str, Any] = field(default_factory=dict)
    private: bool = False
    downloads: int = 0
    tags: list[str] = field(default_factory=list)
    revision: str = "main"
    commit: str | None = None


def model_fingerprint(model: Any) -> dict[str, Any]:
    """``{"model_type": ..., "modules": {path: weight shape}}`` over the modules of ``model`` (or
    of ``model.model`` for a kit) that hold a weight tensor."""
    from ...core.hosts import weight_shape
    from ...core.sites import model_type_of

    module = getattr(model, "model", model)
    if not hasattr(module, "named_modules"):
        raise HubClientError(f"compatible_with must be a torch model, a kit or a fingerprint dict, "
                             f"not {type(model).__name__}")
    modules = {path: list(shape) for path, sub in module.named_modules()
               if path and (shape := weight_shape(sub))}
    return {"model_type": model_type_of(module), "modules": modules}


def _fingerprint(compatible_with: Any) -> dict[str, Any] | None:
    if compatible_with is None or isinstance(compatible_with, dict):
        return compatible_with
    return model_fingerprint(compatible_with)


def _record(entry: dict[str, Any]) -> SearchRecord:
    native = entry.get("adapterkit") or {}
    meta = dict(entry.get("metadata") or {})
    meta.setdefault("adapter", native.get("adapter") or {})
    meta.setdefault("card", native.get("card") or {})
    return SearchRecord(repo_id=str(entry["id"]), score=float(entry.get("score") or 0.0), metadata=meta,
                        why=dict(entry.get("why") or {}), private=bool(entry.get("private")),
                        downloads=int(entry.get("downloads") or 0), tags=list(entry.get("tags") or []),
                        commit=entry.get("sha"))


def search(query: str | None = None, *, endpoint: str | None = None, token: str | None = None,
           compatible_with: Any = None, limit: int = 20, mode: str | None = None,
           sort: str = "relevance", author: str | None = None, filter: Sequence[str] = (),
           method: str | None = None, task: str | None = None, language: str | None = None,
           license: str | None = None, model_type: str | None = None, base_model: str | None = None,
           offset: int = 0) -> list[SearchRecord]:
    """Search the hub at ``endpoint`` (default ``$ADAPTERKIT_HUB``) as ``token``; see the
    module doc. ``mode``: text, semantic or hybrid; ``sort``: relevance, downloads, recency,
    createdAt or name; ``filter``: tags that must all be present; the facets name one value."""
    body: dict[str, Any] = {
        "query": query, "mode": mode or "hybrid", "sort": sort, "limit": limit, "offset": offset,
        "author": author, "filter": list(filter), "method": method, "task": task, "language": language,
        "license": license, "model_type": model_type, "base_model": base_model,
        "compatible_with": _fingerprint(compatible_with)}
    url = endpoint_for(endpoint)
    http = HubHTTP(url, token_for(url, token))
    try:
        reply = http.call("POST", "/api/models/search", json_body=body)
    except HubClientError as exc:
        if mode is not None or exc.code != "SemanticSearchUnavailable":
            raise
        warnings.warn(f"{http.endpoint} cannot search semantically ({exc}); searching by text",
                      stacklevel=2)
        reply = http.call("POST", "/api/models/search", json_body={**body, "mode": "text"})
    return [_record(e) for e in reply.json()]
