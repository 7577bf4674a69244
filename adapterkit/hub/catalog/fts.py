"""Full-text queries: SQLite FTS5 (``bm25``) or PostgreSQL (``tsvector`` and ``ts_rank_cd``).

A query's words (letters and digits) become terms; ``all`` of them must match, or ``any`` for
the text half of hybrid search; the last term also matches as a prefix. Nothing of the user's
text reaches the query syntax except those words.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, Integer, column, func, literal_column, table, text
from sqlalchemy.orm import Session

_WORD = re.compile(r"[^\W_]+")
MAX_TERMS = 16
fts_table = table("search_fts")
#: what the migration creates beside the models (the FTS5 table and its shadow tables on SQLite,
#: the tsvector column and its index on PostgreSQL): schema comparisons leave them out
SCHEMA_EXTRAS = frozenset({"search_fts", "search_fts_data", "search_fts_idx", "search_fts_docsize",
                           "search_fts_config", "tsv", "ix_search_docs_tsv"})


def terms(query: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(query)][:MAX_TERMS]


def _expression(words: list[str], joiner: str, quote: bool) -> str:
    parts = [f'"{w}"' if quote else w for w in words]
    parts[-1] += "*" if quote else ":*"
    return f" {joiner} ".join(parts)


def sqlite_match(words: list[str], any_term: bool) -> str:
    return _expression(words, "OR" if any_term else "AND", quote=True)


def pg_query(words: list[str], any_term: bool) -> ColumnElement[object]:
    return func.to_tsquery("english", _expression(words, "|" if any_term else "&", quote=False))


def pg_match(words: list[str], any_term: bool) -> tuple[ColumnElement[bool], ColumnElement[float]]:
    """(the WHERE clause, the rank) of a PostgreSQL full-text query over ``search_docs.tsv``."""
    tsv: ColumnElement[Any] = literal_column("search_docs.tsv")
    q = pg_query(words, any_term)
    return tsv.op("@@")(q), func.ts_rank_cd(tsv, q)


_RANKED = text("SELECT rowid, bm25(search_fts, 10.0, 1.0) AS r FROM search_fts WHERE search_fts MATCH :m "
               "ORDER BY r LIMIT :n")
_MATCHING = text("SELECT rowid FROM search_fts WHERE search_fts MATCH :m")


def sqlite_ranked(s: Session, words: list[str], any_term: bool, n: int) -> list[tuple[int, float]]:
    """The ``n`` best FTS5 matches (repo id, score: higher is better), the FTS index alone."""
    rows = s.execute(_RANKED, {"m": sqlite_match(words, any_term), "n": n}).tuples()
    return [(int(i), -float(r)) for i, r in rows]


def sqlite_matching(words: list[str], any_term: bool) -> Any:
    """A subquery of the repo ids that match (for ``IN``)."""
    return _MATCHING.bindparams(m=sqlite_match(words, any_term)).columns(column("rowid", Integer))
