"""The first schema: accounts, members, tokens, repos, blobs, commits, files, refs, uploads, audit,
settings.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(96), nullable=False, unique=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("created_at", TS, nullable=False))
    op.create_table(
        "members",
        sa.Column("org_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("role", sa.String(8), nullable=False))
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("org_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE")),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("revoked_at", TS))
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    op.create_table(
        "repos",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("full_name", sa.String(200), nullable=False, unique=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("private", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False))
    op.create_index("ix_repos_owner_id", "repos", ["owner_id"])
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("payload_sha256", sa.String(64)),
        sa.Column("created_at", TS, nullable=False))
    op.create_index("ix_blobs_payload_sha256", "blobs", ["payload_sha256"])
    _history()


def _history() -> None:
    op.create_table(
        "commits",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False),
        sa.Column("parent_id", sa.String(40)),
        sa.Column("author", sa.String(96), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False))
    op.create_index("ix_commits_repo_id", "commits", ["repo_id"])
    op.create_table(
        "files",
        sa.Column("commit_id", sa.String(40), sa.ForeignKey("commits.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("blob", sa.String(64), sa.ForeignKey("blobs.sha256", ondelete="RESTRICT"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("git_oid", sa.String(40), nullable=False),
        sa.Column("lfs", sa.Boolean, nullable=False))
    op.create_index("ix_files_blob", "files", ["blob"])
    op.create_table(
        "refs",
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("commit_id", sa.String(40), nullable=False),
        sa.Column("updated_at", TS, nullable=False))
    op.create_table(
        "uploads",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False),
        sa.Column("blob", sa.String(64), sa.ForeignKey("blobs.sha256", ondelete="RESTRICT"), nullable=False),
        sa.Column("created_at", TS, nullable=False))
    op.create_index("ix_uploads_repo_id", "uploads", ["repo_id"])
    op.create_index("ix_uploads_blob", "uploads", ["blob"])
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(96), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("repo", sa.String(200)),
        sa.Column("revision", sa.String(128)),
        sa.Column("path", sa.String(1024)),
        sa.Column("detail", sa.Text),
        sa.Column("remote", sa.String(64)))
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False))
    op.create_index("ix_audit_repo_at", "audit", ["repo", "at"])


def downgrade() -> None:
    for table in ("settings", "audit", "uploads", "refs", "files", "commits", "blobs", "repos", "tokens",
                  "members", "accounts"):
        op.drop_table(table)
