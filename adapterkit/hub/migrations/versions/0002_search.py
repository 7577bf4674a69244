"""Search: one document per repo (text, embedding, what it needs of a base model), its tags,
and the full-text index: an FTS5 table kept by triggers on SQLite, a generated ``tsvector``
column with a GIN index on PostgreSQL.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE search_fts USING fts5(title, body, content='search_docs', "
    "content_rowid='repo_id', tokenize='porter unicode61')",
    "CREATE TRIGGER search_docs_ai AFTER INSERT ON search_docs BEGIN "
    "INSERT INTO search_fts(rowid, title, body) VALUES (new.repo_id, new.title, new.body); END",
    "CREATE TRIGGER search_docs_ad AFTER DELETE ON search_docs BEGIN "
    "INSERT INTO search_fts(search_fts, rowid, title, body) VALUES ('delete', old.repo_id, old.title, "
    "old.body); END",
    "CREATE TRIGGER search_docs_au AFTER UPDATE ON search_docs BEGIN "
    "INSERT INTO search_fts(search_fts, rowid, title, body) VALUES ('delete', old.repo_id, old.title, "
    "old.body); INSERT INTO search_fts(rowid, title, body) VALUES (new.repo_id, new.title, new.body); END",
]
PG_FTS = [
    "ALTER TABLE search_docs ADD COLUMN tsv tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', body), 'B')) STORED",
    "CREATE INDEX ix_search_docs_tsv ON search_docs USING GIN (tsv)",
]


def upgrade() -> None:
    op.create_table(
        "search_docs",
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("commit_id", sa.String(40), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("requires", sa.JSON),
        sa.Column("requires_hash", sa.String(32)),
        sa.Column("embedding", sa.LargeBinary),
        sa.Column("embed_model", sa.String(96)),
        sa.Column("downloads", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False))
    op.create_index("ix_search_docs_requires_hash", "search_docs", ["requires_hash"])
    op.create_index("ix_search_docs_downloads", "search_docs", ["downloads"])
    op.create_index("ix_search_docs_embed_model", "search_docs", ["embed_model"])
    op.create_index("ix_search_docs_updated_at", "search_docs", ["updated_at"])
    op.create_table(
        "search_tags",
        sa.Column("tag", sa.String(256), primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("search_docs.repo_id", ondelete="CASCADE"),
                  primary_key=True))
    op.create_index("ix_search_tags_repo_id", "search_tags", ["repo_id"])
    statements = PG_FTS if op.get_bind().dialect.name == "postgresql" else SQLITE_FTS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("search_docs_ai", "search_docs_ad", "search_docs_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS search_fts")
    op.drop_table("search_tags")
    op.drop_table("search_docs")
