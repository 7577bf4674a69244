"""The table of derived artifacts per commit (Arrow prototypes and the weight embedding of a LoRA
commit, see :mod:`adapterkit.hub.derived`). A row goes with its commit (``ON DELETE CASCADE``):
purge, repo deletion and expunge never leave one behind."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, now


class Artifact(Base):
    """The derived artifacts of one commit: ``prototypes`` (a safetensors file, one float32 (in,)
    vector per site, the sigmas in its metadata), ``embedding`` (a list of floats), and
    ``source``, the SHA-256 of the config and weights blobs they were computed from."""

    __tablename__ = "artifacts"
    commit_id: Mapped[str] = mapped_column(ForeignKey("commits.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(64), index=True)
    sites: Mapped[int] = mapped_column(Integer)
    prototypes: Mapped[bytes] = mapped_column(LargeBinary)
    prototypes_sha256: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[list[float]] = mapped_column(JSON)
    embedding_version: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
