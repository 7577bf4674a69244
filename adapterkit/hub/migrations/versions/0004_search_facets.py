"""Search facets: ``search_docs.facets`` (one token per tag and one for ``requires_hash``), and on
SQLite a third FTS5 column over it, so that filters join the full-text ``MATCH``
(:mod:`adapterkit.hub.catalog.fts`). Existing documents get their tokens from ``search_tags``
and ``requires_hash``, and the FTS5 index is rebuilt.

Revision ID: 0004
"""

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from adapterkit.hub.catalog.fts import facets_text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TRIGGERS = ("search_docs_ai", "search_docs_ad", "search_docs_au")


def _fts(columns: tuple[str, ...]) -> list[str]:
    """The FTS5 table over ``columns`` of search_docs and the triggers that keep it."""
    cols = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    delete = f"INSERT INTO search_fts(search_fts, rowid, {cols}) VALUES ('delete', old.repo_id, {old});"
    insert = f"INSERT INTO search_fts(rowid, {cols}) VALUES (new.repo_id, {new});"
    return [
        f"CREATE VIRTUAL TABLE search_fts USING fts5({cols}, content='search_docs', "
        "content_rowid='repo_id', tokenize='porter unicode61')",
        f"CREATE TRIGGER search_docs_ai AFTER INSERT ON search_docs BEGIN {insert} END",
        f"CREATE TRIGGER search_docs_ad AFTER DELETE ON search_docs BEGIN {delete} END",
        f"CREATE TRIGGER search_docs_au AFTER UPDATE ON search_docs BEGIN {delete} {insert} END",
        "INSERT INTO search_fts(search_fts) VALUES ('rebuild')",
    ]


def _drop_fts() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS search_fts")


def _backfill() -> None:
    bind = op.get_bind()
    tags: dict[int, list[str]] = defaultdict(list)
    for repo_id, tag in bind.execute(sa.text("SELECT repo_id, tag FROM search_tags")):
        tags[repo_id].append(tag)
    docs = bind.execute(sa.text("SELECT repo_id, requires_hash FROM search_docs"))
    rows = [{"f": facets_text(tags.get(repo_id, ()), requires_hash), "r": repo_id}
            for repo_id, requires_hash in docs]
    if rows:
        bind.execute(sa.text("UPDATE search_docs SET facets = :f WHERE repo_id = :r"), rows)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:  # the update triggers would re-index every row twice while filling the column
        _drop_fts()
    op.add_column("search_docs", sa.Column("facets", sa.Text, nullable=False, server_default=""))
    _backfill()
    if sqlite:
        for statement in _fts(("title", "body", "facets")):
            op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _drop_fts()
    op.drop_column("search_docs", "facets")  # ALTER TABLE DROP COLUMN (SQLite 3.35 and later)
    if sqlite:
        for statement in _fts(("title", "body")):
            op.execute(statement)
