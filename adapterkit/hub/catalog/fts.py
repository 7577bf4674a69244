"""Full-text queries: SQLite FTS5 (``bm25``) or PostgreSQL (``tsvector`` and ``ts_rank_cd``).

A query's words (letters and digits) become terms; ``all`` of them must match, or ``any`` for
the text half of hybrid search; the last term also matches as a prefix. Nothing of the user's
text reaches the query syntax except those words.

On SQLite an ``any`` query leaves out the terms found in more than half of the documents: FTS5's
``bm25`` gives such a term the floor weight (its idf ``log((N - n + 0.5) / (n + 0.5))`` is at
most 0, and is then taken as 1e-6), so it changes no order among the documents that match other
terms, while ranking every document it matches ("in", "for", ...) costs most of the query; a
document that only such terms match is left out. The document counts are kept ``DF_TTL_S``
seconds per database and term.

On SQLite the index also holds a ``facets`` column: one token per tag of the document and one
for its ``requires_hash`` (:func:`facet_token`), so that filters
by tag or compatibility join the ``MATCH`` itself (``facets : "..."``), and FTS5 intersects its
posting lists instead of enumerating every document the words match and testing each against
the filters. The words of a query match the title and body alone (``{title body} : (...)``), and
``bm25`` gives the facets column the weight 0. (FTS5's ``bm25`` normalises by the length of the
whole row, facet tokens included, so they lengthen every row by a few tokens.)
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Integer, column, func, literal_column, select, table, text
from sqlalchemy.orm import Session

_WORD = re.compile(r"[^\W_]+")
MAX_TERMS = 16
DF_TTL_S = 300.0
fts_table = table("search_fts")
#: what the migration creates beside the models (the FTS5 table and its shadow tables on SQLite,
#: the tsvector column and its index on PostgreSQL): schema comparisons leave them out
SCHEMA_EXTRAS = frozenset({"search_fts", "search_fts_data", "search_fts_idx", "search_fts_docsize",
                           "search_fts_config", "tsv", "ix_search_docs_tsv"})


TEXT_COLUMNS = "{title body}"
MAX_TAG = 256  # the length of ``search_tags.tag``: longer tags are kept (and filtered) cut to it


def facet_token(kind: str, value: str) -> str:
    """The FTS5 token of a tag (``kind`` "tag") or a ``requires_hash`` (``kind`` "requires"):
    twenty decimal digits of a BLAKE2b hash (personalised by ``kind``), which neither the
    tokenizer nor the Porter stemmer changes."""
    digest = hashlib.blake2b(value.encode(), digest_size=8, person=kind.encode()[:16]).digest()
    return f"{int.from_bytes(digest, 'big'):020d}"


def facets_text(tags: Iterable[str], requires_hash: str | None) -> str:
    """The ``facets`` column of a search document."""
    out = [facet_token("tag", t[:MAX_TAG]) for t in sorted(set(tags))]
    if requires_hash:
        out.append(facet_token("requires", requires_hash))
    return " ".join(out)


def facets_match(tags: Iterable[str], requires_hashes: Iterable[str] | None) -> str:
    """The FTS5 clause that keeps the documents with every tag of ``tags`` and, unless
    ``requires_hashes`` is None, one of those hashes (an empty list keeps none: the caller
    answers nothing without querying)."""
    parts = [f'facets : "{facet_token("tag", t[:MAX_TAG])}"' for t in tags]
    if requires_hashes is not None:
        parts.append("facets : (" + " OR ".join(f'"{facet_token("requires", h)}"'
                                                 for h in requires_hashes) + ")")
    return " AND ".join(parts)


def with_facets(match: str, facets: str) -> str:
    """``match`` (an expression over the text columns) restricted by a :func:`facets_match`."""
    return f"({match}) AND {facets}" if facets else match


def terms(query: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(query)][:MAX_TERMS]


def _expression(words: list[str], joiner: str, quote: bool) -> str:
    parts = [f'"{w}"' if quote else w for w in words]
    parts[-1] += "*" if quote else ":*"
    return f" {joiner} ".join(parts)


def _sqlite_parts(words: list[str]) -> list[str]:
    return [f'"{w}"' for w in words[:-1]] + [f'"{words[-1]}"*']


def sqlite_match(words: list[str], any_term: bool) -> str:
    """The FTS5 expression of ``words`` (all of them, or any), over the text columns alone."""
    return f"{TEXT_COLUMNS} : ({_expression(words, 'OR' if any_term else 'AND', quote=True)})"


_COUNTS: dict[tuple[str, str], tuple[float, int]] = {}
_COUNT_MATCH = text("SELECT count(*) FROM search_fts WHERE search_fts MATCH :m")
_COUNT_DOCS = text("SELECT count(*) FROM search_docs")


def _counted(s: Session, key: str, stmt: Any, params: dict[str, Any]) -> int:
    where = (str(s.get_bind().engine.url), key)
    hit = _COUNTS.get(where)
    if hit is not None and time.monotonic() - hit[0] < DF_TTL_S:
        return hit[1]
    if len(_COUNTS) > 100_000:
        _COUNTS.clear()
    n = int(s.execute(stmt, params).scalar() or 0)
    _COUNTS[where] = (time.monotonic(), n)
    return n


def sqlite_any_match(s: Session, words: list[str]) -> str:
    """The FTS5 ``any`` expression (over the text columns) without the terms in more than half
    of the documents (module doc); all terms when every one is that common."""
    parts = _sqlite_parts(words)
    total = _counted(s, "", _COUNT_DOCS, {})
    kept = [p for p in parts
            if 2 * _counted(s, p, _COUNT_MATCH, {"m": f"{TEXT_COLUMNS} : {p}"}) <= total]
    return f"{TEXT_COLUMNS} : ({' OR '.join(kept or parts)})"


def pg_query(words: list[str], any_term: bool) -> ColumnElement[object]:
    return func.to_tsquery("english", _expression(words, "|" if any_term else "&", quote=False))


def pg_match(words: list[str], any_term: bool) -> tuple[ColumnElement[bool], ColumnElement[float]]:
    """(the WHERE clause, the rank) of a PostgreSQL full-text query over ``search_docs.tsv``."""
    tsv: ColumnElement[Any] = literal_column("search_docs.tsv")
    q = pg_query(words, any_term)
    return tsv.op("@@")(q), func.ts_rank_cd(tsv, q)


_RANKED = text("SELECT rowid, bm25(search_fts, 10.0, 1.0, 0.0) AS r FROM search_fts "
               "WHERE search_fts MATCH :m ORDER BY r LIMIT :n")
_MATCHING = text("SELECT rowid FROM search_fts WHERE search_fts MATCH :m")


def sqlite_ranked(s: Session, match: str, n: int) -> list[tuple[int, float]]:
    """The ``n`` best FTS5 matches of the expression ``match`` (repo id, score: higher is
    better), the FTS index alone."""
    rows = s.execute(_RANKED, {"m": match, "n": n}).tuples()
    return [(int(i), -float(r)) for i, r in rows]


def sqlite_ranked_within(s: Session, match: str, within: Any, n: int) -> list[tuple[int, float]]:
    """The ``n`` best FTS5 matches of ``match`` among the ids of the subquery ``within``. The
    index enumerates its matches once and each is looked up in ``within`` (materialised once),
    ``bm25`` being computed only for those found there: ``+rowid`` keeps SQLite from handing
    the ``IN`` to FTS5, which would run the whole query again for every id."""
    score: Any = literal_column("bm25(search_fts, 10.0, 1.0, 0.0)").label("r")
    q = select(literal_column("search_fts.rowid"), score).select_from(fts_table).where(
        text("search_fts MATCH :m").bindparams(m=match), literal_column("+search_fts.rowid").in_(within))
    rows = s.execute(q.order_by(score, literal_column("search_fts.rowid")).limit(n)).tuples()
    return [(int(i), -float(r)) for i, r in rows]


def facet_ids(s: Session, where: Any) -> set[int] | None:
    """The ids of the documents that the tag and compatibility filters of ``where`` (a
    ``query.Filters``) keep, from the FTS5 index; None where it does not answer them (no such
    filters, or PostgreSQL)."""
    if s.get_bind().dialect.name != "sqlite":
        return None
    if where.none:
        return set()
    match = where.facets()
    if not match:
        return None
    # tens of thousands of ids for a broad filter: fetched by the sqlite3 cursor in one call,
    # rather than row by row through SQLAlchemy's result
    raw = s.connection().connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        return {i for (i,) in cursor.execute(str(_MATCHING), {"m": match}).fetchall()}
    finally:
        cursor.close()


def sqlite_matching(words: list[str], any_term: bool) -> Any:
    """A subquery of the repo ids that match (for ``IN``)."""
    return _MATCHING.bindparams(m=sqlite_match(words, any_term)).columns(column("rowid", Integer))
