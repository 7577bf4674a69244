"""Running a search: conditions (read access, owner, tags and facets, compatibility), then text,
semantic or hybrid ranking, sorting and the hits.

Semantic search asks the vector index for a few times ``limit`` neighbours (with filters, at
least ``service.FILTERED_CANDIDATES``) and keeps those that pass read access and the filters;
when too few remain, it ranks exactly over the vectors of the repos that pass them. Hybrid
ranking fuses the text ranking (any word matching) and the semantic one by reciprocal rank
fusion, ``sum 1 / (60 + rank)``. Sorting by downloads or recency orders all matches of a text
query or a listing, and the ``pool`` best hits of a semantic or hybrid one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, true
from sqlalchemy.orm import Session

from ..accounts import Caller
from ..db.models import Account, Repo, SearchDoc, SearchTag
from ..errors import HubError
from . import fts
from .compat import check_fingerprint, fits

MODES = ("text", "semantic", "hybrid")
FACETS = ("method", "task", "language", "license", "model_type", "base_model")
RRF_K = 60
MIN_POOL = 50
MAX_IDS = 20_000  # ids sent as parameters of one IN (SQLite allows 32766 parameters)
_REQUIRES: dict[str, Any] = {}  # requires_hash -> requires (content-addressed, never changes)


@dataclass
class SearchHit:
    """One repo found: its id ``owner/name``, its score (higher is better; see ``why``) and the
    metadata extracted from its head commit."""

    repo: str
    repo_id: int
    score: float
    metadata: dict[str, Any]
    why: dict[str, Any] = field(default_factory=dict)


def _sort_key(sort: str) -> Any:
    keys = {"downloads": SearchDoc.downloads.desc(), "recency": SearchDoc.updated_at.desc(),
            "lastModified": SearchDoc.updated_at.desc(), "createdAt": Repo.created_at.desc(),
            "name": Repo.full_name, "id": Repo.full_name}
    if sort not in keys and sort != "relevance":
        raise HubError(f"bad sort {sort!r}: use relevance, downloads, recency (or lastModified), "
                       "createdAt or name", code="BadSearch")
    return keys.get(sort)


def readable_owners(caller: Caller | None) -> list[int]:
    """The accounts whose private repos ``caller`` may read (as ``repos.role_on`` decides)."""
    if caller is None:
        return []
    owners = {caller.user_id, *caller.roles}
    return sorted(o for o in owners if caller.org_id is None or o == caller.org_id)


def compatible_hashes(s: Session, fingerprint: Any) -> list[str]:
    modules = check_fingerprint(fingerprint)
    hashes = [h for h in s.scalars(select(SearchDoc.requires_hash).distinct()) if h]
    missing = [h for h in hashes if h not in _REQUIRES]
    for h in missing:
        _REQUIRES[h] = s.scalar(select(SearchDoc.requires).where(SearchDoc.requires_hash == h).limit(1))
    return [h for h in hashes if fits(modules, _REQUIRES.get(h))]


def conditions(s: Session, caller: Caller | None, author: str | None, tags: Sequence[str],
               fingerprint: Any) -> tuple[list[ColumnElement[bool]], bool]:
    """(WHERE clauses over repos and search_docs, whether any beyond read access)."""
    owners = readable_owners(caller)
    out: list[ColumnElement[bool]] = [or_(Repo.private.is_(False), Repo.owner_id.in_(owners))
                                      if owners else Repo.private.is_(False)]
    if author:
        out.append(Repo.owner_id == select(Account.id).where(Account.name == author).scalar_subquery())
    for tag in tags:
        out.append(SearchDoc.repo_id.in_(select(SearchTag.repo_id).where(SearchTag.tag == tag)))
    if fingerprint is not None:
        ok = compatible_hashes(s, fingerprint)
        out.append(SearchDoc.requires_hash.in_(ok) if ok else false())
    return out, len(out) > 1


def _base(*cols: Any) -> Select[Any]:
    return select(*cols).select_from(Repo).outerjoin(SearchDoc, SearchDoc.repo_id == Repo.id)


def _docs(*cols: Any) -> Select[Any]:
    """Repos that have a search document (text and semantic queries need one)."""
    return select(*cols).select_from(SearchDoc).join(Repo, Repo.id == SearchDoc.repo_id)


def listing(s: Session, conds: list[ColumnElement[bool]], sort: str, limit: int,
            offset: int) -> list[tuple[int, float]]:
    key = _sort_key(sort)
    q = _base(Repo.id).where(and_(true(), *conds))
    q = q.order_by(*(k for k in (key, Repo.full_name) if k is not None)).offset(offset).limit(limit)
    return [(i, 0.0) for i in s.scalars(q)]


def text_ranked(s: Session, query: str, conds: list[ColumnElement[bool]], pool: int, sort: str,
                any_term: bool = False) -> list[tuple[int, float]]:
    """Repo ids and scores of a full-text query, best first (or in ``sort`` order)."""
    words = fts.terms(query)
    if not words:
        return []
    key = _sort_key(sort)
    if s.get_bind().dialect.name == "postgresql":
        match, rank = fts.pg_match(words, any_term)
        q = _docs(Repo.id, rank).where(match, *conds)
        q = q.order_by(key if key is not None else rank.desc(), Repo.id)
        found = [(i, float(r)) for i, r in s.execute(q.limit(pool)).tuples()]
    elif key is not None:
        q = _docs(Repo.id).where(Repo.id.in_(fts.sqlite_matching(words, any_term)), *conds)
        found = [(i, 0.0) for i in s.scalars(q.order_by(key, Repo.id).limit(pool))]
    else:
        found = _sqlite_relevant(s, words, any_term, conds, pool)
    if not any_term and len(found) < pool:  # the Hugging Face meaning: a part of the repo id
        seen = {i for i, _ in found}
        # a repo with no commit yet has no search document but is still found by its id
        like = _base(Repo.id).where(func.lower(Repo.full_name).contains(query.lower(), autoescape=True),
                                    *conds).order_by(key if key is not None else Repo.full_name)
        found += [(i, 0.0) for i in s.scalars(like.limit(pool)) if i not in seen][:pool - len(found)]
    return found


def _sqlite_relevant(s: Session, words: list[str], any_term: bool, conds: list[ColumnElement[bool]],
                     pool: int) -> list[tuple[int, float]]:
    """The FTS5 index ranks alone (SQLite would otherwise test MATCH row by row), then the
    conditions keep what they allow. An ``any`` query (the text half of hybrid search) leaves
    out the terms in more than half of the documents (see :mod:`.fts`): a document that only
    they match is not in its ranking."""
    match = fts.sqlite_any_match(s, words) if any_term else fts.sqlite_match(words, False)
    return _sqlite_within(s, match, conds, pool)


def _sqlite_within(s: Session, match: str, conds: list[ColumnElement[bool]],
                   pool: int) -> list[tuple[int, float]]:
    """Under read access alone (most matches pass) the best few matches, more while too few
    pass; with filters (or past ``MAX_IDS``) the best of the matches that pass them, in one
    query (``fts.sqlite_ranked_within``)."""
    n = max(pool * 4, 200)
    while len(conds) == 1 and n <= MAX_IDS:
        ranked = fts.sqlite_ranked(s, match, n)
        ok = set(s.scalars(_docs(Repo.id).where(Repo.id.in_([i for i, _ in ranked]), *conds))) \
            if ranked else set()
        found = [(i, sc) for i, sc in ranked if i in ok]
        if len(found) >= pool or len(ranked) < n:
            return found[:pool]
        n *= 4
    return fts.sqlite_ranked_within(s, match, _docs(Repo.id).where(*conds), pool)


def fuse(*rankings: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of several rankings (each best first)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (repo_id, _) in enumerate(ranking, start=1):
            scores[repo_id] = scores.get(repo_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise HubError(f"bad search mode {mode!r}: use one of {list(MODES)}", code="BadSearch")


def facet_tags(tags: Sequence[str], facets: dict[str, str | None]) -> list[str]:
    """``filter=`` tags plus ``key:value`` for each facet given (method, task, language, ...)."""
    out = [t for item in tags for t in item.split(",") if t]
    for key, value in facets.items():
        if key not in FACETS:
            raise HubError(f"unknown filter {key!r}: use one of {list(FACETS)}", code="BadSearch")
        if value:
            out.append(f"{key}:{value}")
    return out
