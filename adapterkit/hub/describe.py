"""The metadata of a commit's tree, read from the blob store at commit time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .commits import Entry
from .db.models import Blob
from .metadata import extract
from .settings import Hub


def describer(hub: Hub, session: Session) -> Callable[[dict[str, Entry]], dict[str, Any]]:
    def read(sha256: str, limit: int) -> bytes:
        with hub.store.open(sha256) as f:
            return f.read(limit)

    def describe(tree: dict[str, Entry]) -> dict[str, Any]:
        blobs = [e.blob for e in tree.values()]
        payloads = dict(session.execute(select(Blob.sha256, Blob.payload_sha256)
                                        .where(Blob.sha256.in_(blobs))).tuples().all()) if blobs else {}
        return extract({p: (e.blob, e.size) for p, e in tree.items()}, read, payloads)

    return describe
