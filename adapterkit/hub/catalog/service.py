"""``search_repos``: the hub's search, as the HTTP routes, the pages and retrieval call it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from ..accounts import Caller
from ..db.models import Repo, SearchDoc
from ..errors import HubError
from ..settings import Hub
from . import fts
from .embed import SemanticUnavailable, embedder, query_vector
from .query import (
    MIN_POOL,
    Filters,
    SearchHit,
    _base,
    _docs,
    _sort_key,
    check_mode,
    facet_tags,
    filters,
    fuse,
    listing,
    passing,
    text_ranked,
)
from .vectors import index_for

DEFAULT_EXACT_MAX = 20_000
#: neighbours a filtered semantic query asks the index for before ranking exactly over every
#: vector that passes the filters (when fewer than ``limit`` of those neighbours pass)
FILTERED_CANDIDATES = 1000


def semantic_ranked(hub: Hub, s: Session, query: str, where: Filters, pool: int) -> list[tuple[int, float]]:
    try:
        stamp = embedder().stamp
        q = query_vector(query)
    except SemanticUnavailable as exc:
        raise HubError(str(exc), status=501, code="SemanticSearchUnavailable") from None
    if where.none:
        return []
    index = index_for(hub.db, stamp, getattr(hub.settings, "search_exact_max", DEFAULT_EXACT_MAX))
    index.refresh(s)
    facets = fts.facet_ids(s, where)  # the ids the tag and compatibility filters keep (SQLite)
    conds = where.access if facets is not None else where.sql()
    wide = max(pool * 20, FILTERED_CANDIDATES) if where.filtered else max(pool * 3, MIN_POOL)
    found = index.nearest(q, wide)
    near = [(i, sc) for i, sc in found if i in facets] if facets is not None else found
    if near:
        kept = passing(s, near, conds)
        if len(kept) >= pool or len(found) >= index.n:
            return kept[:pool]
    if facets is not None:
        return _exact_within(s, index, q, sorted(facets), conds, pool)
    ids = list(s.scalars(_docs(Repo.id).where(SearchDoc.embedding.is_not(None), *conds)))
    return index.exact(q, pool, ids)


def _exact_within(s: Session, index: Any, q: Any, ids: list[int], conds: list[ColumnElement[bool]],
                  pool: int) -> list[tuple[int, float]]:
    """The ``pool`` nearest of the vectors of ``ids`` that pass ``conds`` (read access, the
    author): ranked exactly, then checked best first, more at a time while too few pass."""
    n = pool * 4
    while True:
        kept = passing(s, index.exact(q, min(n, len(ids)), ids), conds)
        if len(kept) >= pool or n >= len(ids):
            return kept[:pool]
        n *= 4


def hits(s: Session, ranked: list[tuple[int, float]], why: dict[int, dict[str, Any]]) -> list[SearchHit]:
    if not ranked:
        return []
    cols = (Repo.id, Repo.full_name, Repo.private, SearchDoc.meta, SearchDoc.downloads,
            SearchDoc.updated_at, SearchDoc.commit_id, SearchDoc.embed_model)
    rows = {r[0]: r for r in s.execute(_base(*cols).where(Repo.id.in_([i for i, _ in ranked]))).tuples()}
    out = []
    for repo_id, score in ranked:
        r = rows.get(repo_id)
        if r is None:
            continue
        meta = dict(r[3] or {})
        meta.update({"private": r[2], "downloads": r[4] or 0, "commit": r[6], "embedding_model": r[7],
                     "updated_at": r[5].isoformat() if r[5] else None})
        out.append(SearchHit(r[1], repo_id, score, meta, why.get(repo_id, {})))
    return out


def _resort(s: Session, ranked: list[tuple[int, float]], sort: str) -> list[tuple[int, float]]:
    key = _sort_key(sort)
    if key is None or not ranked:
        return ranked
    score = dict(ranked)
    q = _base(Repo.id).where(Repo.id.in_(list(score))).order_by(key, Repo.full_name)
    return [(i, score[i]) for i in s.scalars(q)]


def search_repos(hub: Hub, caller: Caller | None, query: str | None = None, *, mode: str = "text",
                 author: str | None = None, tags: Sequence[str] = (), method: str | None = None,
                 task: str | None = None, language: str | None = None, license: str | None = None,
                 model_type: str | None = None, base_model: str | None = None,
                 compatible_with: dict[str, Any] | None = None, sort: str = "relevance",
                 limit: int = 20, offset: int = 0) -> list[SearchHit]:
    """The repos ``caller`` may read that match, best first; see :mod:`adapterkit.hub.catalog`."""
    check_mode(mode)
    _sort_key(sort)
    wanted = facet_tags(tags, {"method": method, "task": task, "language": language,
                               "license": license, "model_type": model_type, "base_model": base_model})
    need = offset + limit
    pool = max(need, MIN_POOL)
    why: dict[int, dict[str, Any]] = {}
    with hub.db.read() as s:
        where = filters(s, caller, author, wanted, compatible_with)
        conds = where.sql()
        text = (query or "").strip()
        if not text:
            return hits(s, listing(s, conds, "name" if sort == "relevance" else sort, limit, offset), why)
        if mode == "text":
            ranked = text_ranked(s, text, where, need, sort)
            return hits(s, ranked[offset:need], why)
        semantic = semantic_ranked(hub, s, text, where, pool)
        for rank, (i, sc) in enumerate(semantic, start=1):
            why.setdefault(i, {}).update(semantic_rank=rank, semantic_score=round(sc, 6))
        ranked = semantic
        if mode == "hybrid":
            lexical = text_ranked(s, text, where, pool, "relevance", any_term=True)
            for rank, (i, _) in enumerate(lexical, start=1):
                why.setdefault(i, {})["text_rank"] = rank
            ranked = fuse(lexical, semantic)[:pool]
        return hits(s, _resort(s, ranked, sort)[offset:need], why)


__all__ = ["SearchHit", "search_repos"]
