"""The hub's tables (SQLAlchemy 2 declarative models), the same on SQLite and PostgreSQL.

The migration scripts under ``adapterkit/hub/migrations/versions`` create exactly these tables;
a test compares the two.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A user or an organisation (``kind``): the owner part of ``owner/name``."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(96), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class Member(Base):
    """A user's role in an organisation: ``read``, ``write`` or ``admin``."""

    __tablename__ = "members"
    org_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))


class Token(Base):
    """An access token, stored as the SHA-256 of its text; ``org_id`` limits it to one org."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Repo(Base):
    __tablename__ = "repos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"), index=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class Blob(Base):
    """A stored content blob; ``payload_sha256`` hashes a safetensors file's tensor bytes alone."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    payload_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class Commit(Base):
    """An immutable commit: its id, parent, author, message and extracted metadata (``meta``)."""

    __tablename__ = "commits"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(40))
    author: Mapped[str] = mapped_column(String(96))
    message: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class File(Base):
    """One path of a commit and the blob it holds; ``git_oid`` is the git blob id clients compare."""

    __tablename__ = "files"
    commit_id: Mapped[str] = mapped_column(ForeignKey("commits.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    blob: Mapped[str] = mapped_column(ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    git_oid: Mapped[str] = mapped_column(String(40))
    lfs: Mapped[bool] = mapped_column(Boolean, default=False)


class Ref(Base):
    """A branch or tag (``kind``) pointing at a commit."""

    __tablename__ = "refs"
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    commit_id: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class Upload(Base):
    """A blob received for a repo and not yet committed; purge collects it after a grace period."""

    __tablename__ = "uploads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    blob: Mapped[str] = mapped_column(ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)


class Setting(Base):
    """Server-wide values shared by every hub process (the key that signs upload URLs)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Audit(Base):
    """Who did what to which repo, and when; kept after the repo is deleted."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_repo_at", "repo", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    actor: Mapped[str] = mapped_column(String(96))
    action: Mapped[str] = mapped_column(String(32))
    repo: Mapped[str | None] = mapped_column(String(200))
    revision: Mapped[str | None] = mapped_column(String(128))
    path: Mapped[str | None] = mapped_column(String(1024))
    detail: Mapped[str | None] = mapped_column(Text)
    remote: Mapped[str | None] = mapped_column(String(64))


class SearchDoc(Base):
    """The search document of a repo, rebuilt from the head of ``main`` at every commit there:
    the indexed text, the embedding of its summary (stamped with the embedding model and its
    version), what the adapter needs of a base model (``requires``: host path -> weight shape,
    hashed in ``requires_hash``), download count and update time. ``facets`` holds one token per
    tag and one for ``requires_hash``, for the full-text index, which is kept outside these
    tables (see :mod:`adapterkit.hub.catalog.fts`)."""

    __tablename__ = "search_docs"
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    commit_id: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    requires: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    requires_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    facets: Mapped[str] = mapped_column(Text, default="", server_default="")
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embed_model: Mapped[str | None] = mapped_column(String(96), index=True)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)


class SearchTag(Base):
    """One tag of a search document (README tags and derived ones: ``method:lora``,
    ``task:...``, ``language:...``, ``license:...``, ``model_type:...``, ``base_model:...``)."""

    __tablename__ = "search_tags"
    tag: Mapped[str] = mapped_column(String(256), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("search_docs.repo_id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


__all__ = ["Account", "Audit", "Base", "Blob", "Commit", "File", "Member", "Ref", "Repo", "SearchDoc",
           "SearchTag", "Setting", "Token", "Upload", "as_utc", "now"]
