"""Derived artifacts per commit: Arrow prototypes and the weight embedding of LoRA commits.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("commit_id", sa.String(40), sa.ForeignKey("commits.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("sites", sa.Integer, nullable=False),
        sa.Column("prototypes", sa.LargeBinary, nullable=False),
        sa.Column("prototypes_sha256", sa.String(64), nullable=False),
        sa.Column("embedding", sa.JSON, nullable=False),
        sa.Column("embedding_version", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_artifacts_source", "artifacts", ["source"])


def downgrade() -> None:
    op.drop_table("artifacts")
