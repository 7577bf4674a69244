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

import time
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


HASHES_TTL_S = 10.0
#: database -> (when read, the newest document's time then, the hashes)
_HASHES: dict[str, tuple[float, Any, list[str]]] = {}


def _distinct_hashes(s: Session) -> list[str]:
    """The ``requires_hash`` values of the search documents, read again when a document was
    written since (every write stamps ``updated_at``; the newest is one index lookup), and at
    least every ``HASHES_TTL_S`` seconds (a hub process whose clock runs behind may stamp an
    older time). A deleted document's hash may stay listed: it then matches nothing."""
    where = str(s.get_bind().engine.url)
    newest = s.scalar(select(func.max(SearchDoc.updated_at)))
    hit = _HASHES.get(where)
    if hit is not None and hit[1] == newest and time.monotonic() - hit[0] < HASHES_TTL_S:
        return hit[2]
    hashes = [h for h in s.scalars(select(SearchDoc.requires_hash).distinct()) if h]
    _HASHES[where] = (time.monotonic(), newest, hashes)
    return hashes


def compatible_hashes(s: Session, fingerprint: Any) -> list[str]:
    modules = check_fingerprint(fingerprint)
    hashes = _distinct_hashes(s)
    missing = [h for h in hashes if h not in _REQUIRES]
    for h in missing:
        _REQUIRES[h] = s.scalar(select(SearchDoc.requires).where(SearchDoc.requires_hash == h).limit(1))
    return [h for h in hashes if fits(modules, _REQUIRES.get(h))]


@dataclass
class Filters:
    """What a search keeps: ``access`` (read access, the author) as SQL, and the tags and the
    compatible ``requires_hash`` values (None: no compatibility filter), which the SQLite
    full-text index also answers itself (:func:`fts.facets_match`)."""

    access: list[ColumnElement[bool]]
    tags: list[str] = field(default_factory=list)
    hashes: list[str] | None = None

    @property
    def filtered(self) -> bool:
        """Whether anything beyond read access is asked for."""
        return len(self.access) > 1 or bool(self.tags) or self.hashes is not None

    @property
    def none(self) -> bool:
        """Whether nothing can pass (a compatibility filter that no stored adapter fits)."""
        return self.hashes == []

    def sql(self) -> list[ColumnElement[bool]]:
        """Every condition as WHERE clauses over repos and search_docs."""
        out = list(self.access)
        out += [SearchDoc.repo_id.in_(select(SearchTag.repo_id).where(SearchTag.tag == t[:fts.MAX_TAG]))
                for t in self.tags]
        if self.hashes is not None:
            out.append(SearchDoc.requires_hash.in_(self.hashes) if self.hashes else false())
        return out

    def facets(self) -> str:
        """The tags and hashes as an FTS5 clause ("" when there are none)."""
        return fts.facets_match(self.tags, self.hashes)


def filters(s: Session, caller: Caller | None, author: str | None, tags: Sequence[str],
            fingerprint: Any) -> Filters:
    owners = readable_owners(caller)
    access: list[ColumnElement[bool]] = [or_(Repo.private.is_(False), Repo.owner_id.in_(owners))
                                         if owners else Repo.private.is_(False)]
    if author:
        access.append(Repo.owner_id == select(Account.id).where(Account.name == author).scalar_subquery())
    hashes = compatible_hashes(s, fingerprint) if fingerprint is not None else None
    return Filters(access, list(tags), hashes)


def conditions(s: Session, caller: Caller | None, author: str | None, tags: Sequence[str],
               fingerprint: Any) -> tuple[list[ColumnElement[bool]], bool]:
    """(WHERE clauses over repos and search_docs, whether any beyond read access)."""
    f = filters(s, caller, author, tags, fingerprint)
    return f.sql(), f.filtered


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


def text_ranked(s: Session, query: str, where: Filters, pool: int, sort: str,
                any_term: bool = False) -> list[tuple[int, float]]:
    """Repo ids and scores of a full-text query, best first (or in ``sort`` order)."""
    words = fts.terms(query)
    if not words or where.none:
        return []
    key, conds = _sort_key(sort), where.sql()
    if s.get_bind().dialect.name == "postgresql":
        match, rank = fts.pg_match(words, any_term)
        q = _docs(Repo.id, rank).where(match, *conds)
        q = q.order_by(key if key is not None else rank.desc(), Repo.id)
        found = [(i, float(r)) for i, r in s.execute(q.limit(pool)).tuples()]
    elif key is not None:
        q = _docs(Repo.id).where(Repo.id.in_(fts.sqlite_matching(words, any_term)), *conds)
        found = [(i, 0.0) for i in s.scalars(q.order_by(key, Repo.id).limit(pool))]
    else:
        found = _sqlite_relevant(s, words, any_term, where, pool)
    if not any_term and len(found) < pool:  # the Hugging Face meaning: a part of the repo id
        seen = {i for i, _ in found}
        # a repo with no commit yet has no search document but is still found by its id
        like = _base(Repo.id).where(func.lower(Repo.full_name).contains(query.lower(), autoescape=True),
                                    *conds).order_by(key if key is not None else Repo.full_name)
        found += [(i, 0.0) for i in s.scalars(like.limit(pool)) if i not in seen][:pool - len(found)]
    return found


def _sqlite_relevant(s: Session, words: list[str], any_term: bool, where: Filters,
                     pool: int) -> list[tuple[int, float]]:
    """The FTS5 index ranks alone (SQLite would otherwise test MATCH row by row), with the tag
    and compatibility filters in its ``MATCH`` (see :mod:`.fts`), then read access and the
    author keep what they allow. An ``any`` query (the text half of hybrid search) leaves out
    the terms in more than half of the documents (see :mod:`.fts`): a document that only they
    match is not in its ranking."""
    match = fts.sqlite_any_match(s, words) if any_term else fts.sqlite_match(words, False)
    return _sqlite_within(s, fts.with_facets(match, where.facets()), where.access, pool)


def passing(s: Session, ranked: list[tuple[int, float]],
            conds: list[ColumnElement[bool]]) -> list[tuple[int, float]]:
    """The entries of ``ranked`` (repo id, score) whose repos pass ``conds``, in their order."""
    if not ranked:
        return []
    ok = set(s.scalars(_docs(Repo.id).where(Repo.id.in_([i for i, _ in ranked]), *conds)))
    return [(i, sc) for i, sc in ranked if i in ok]


def _sqlite_within(s: Session, match: str, conds: list[ColumnElement[bool]],
                   pool: int) -> list[tuple[int, float]]:
    """Under read access alone (most matches pass) the best few matches, more while too few
    pass; with filters (or past ``MAX_IDS``) the best of the matches that pass them, in one
    query (``fts.sqlite_ranked_within``)."""
    n = max(pool * 4, 200)
    while len(conds) == 1 and n <= MAX_IDS:
        ranked = fts.sqlite_ranked(s, match, n)
        found = passing(s, ranked, conds)
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
