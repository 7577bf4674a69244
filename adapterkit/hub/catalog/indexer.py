"""Keeping search documents current: one per repo, from the head of ``main``.

:func:`index_commit` runs after each commit to ``main`` has landed (outside its transaction, so
the embedding does not hold the database's write lock). It writes only while the commit is
still the head, so a slower indexer of an older commit never overwrites a newer document. A
failure is logged and leaves the commit as it is; :func:`reindex` (``adapterkit hub reindex``)
rebuilds every document, for a hub upgraded from before search or a changed embedding model.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from ..db.models import Commit, Repo, SearchDoc, SearchTag, now
from ..repos import files_of, find_ref
from ..settings import Hub
from .document import Document, document
from .embed import SemanticUnavailable, embedder, to_bytes
from .fts import MAX_TAG, facets_text

log = logging.getLogger("adapterkit.hub.catalog")
BRANCH = "main"


def build(hub: Hub, repo: Repo, commit: Commit, files: dict[str, tuple[str, int]]) -> Document:
    def read(sha256: str, limit: int) -> bytes:
        with hub.store.open(sha256) as f:
            return f.read(limit)

    return document(repo.full_name, commit.meta or {}, files, read)


def embed_summary(doc: Document) -> tuple[bytes | None, str | None]:
    """The summary's embedding and its stamp, or (None, None) without the embedding extra."""
    try:
        emb = embedder()
    except SemanticUnavailable:
        return None, None
    return to_bytes(emb.embed([doc.summary])[0]), emb.stamp


def store(s: Session, repo_id: int, commit_id: str, doc: Document, vector: bytes | None,
          stamp: str | None) -> None:
    """Write (or replace) the document of ``repo_id`` and its tags, keeping its downloads."""
    row = s.get(SearchDoc, repo_id)
    values = {"commit_id": commit_id, "title": doc.title, "summary": doc.summary, "body": doc.body,
              "meta": doc.meta, "requires": doc.requires, "requires_hash": doc.requires_hash,
              "facets": facets_text(doc.tags, doc.requires_hash), "embedding": vector,
              "embed_model": stamp, "updated_at": now()}
    if row is None:
        s.add(SearchDoc(repo_id=repo_id, downloads=0, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)
    s.flush()
    s.execute(delete(SearchTag).where(SearchTag.repo_id == repo_id))
    s.add_all(SearchTag(tag=t[:MAX_TAG], repo_id=repo_id) for t in sorted(set(doc.tags)))


def store_new(s: Session, docs: list[tuple[int, str, Document, bytes | None, str | None]]) -> None:
    """Insert the documents of repos that have none yet, in bulk: (repo id, commit id, document,
    vector, stamp) each (seeding a benchmark; commits go through :func:`index_commit`)."""
    when = now()
    s.execute(insert(SearchDoc), [
        {"repo_id": r, "commit_id": c, "title": d.title, "summary": d.summary, "body": d.body,
         "meta": d.meta, "requires": d.requires, "requires_hash": d.requires_hash,
         "facets": facets_text(d.tags, d.requires_hash), "embedding": v,
         "embed_model": st, "downloads": 0, "updated_at": when} for r, c, d, v, st in docs])
    tags = [{"tag": t[:MAX_TAG], "repo_id": r} for r, _, d, _, _ in docs for t in sorted(set(d.tags))]
    if tags:
        s.execute(insert(SearchTag), tags)


def index_commit(hub: Hub, repo_id: int, commit_id: str, branch: str = BRANCH) -> bool:
    """Index ``commit_id`` of repo ``repo_id`` if it is the head of ``main``; True if written."""
    if branch != BRANCH:
        return False
    try:
        with hub.db.read() as s:
            repo, commit = s.get(Repo, repo_id), s.get(Commit, commit_id)
            head = find_ref(s, repo, BRANCH, kind="branch") if repo is not None else None
            if repo is None or commit is None or head is None or head.commit_id != commit_id:
                return False
            files = {p: (f.blob, f.size) for p, f in files_of(s, commit_id).items()}
        doc = build(hub, repo, commit, files)
        vector, stamp = embed_summary(doc)
        with hub.db.write() as s:
            repo = s.get(Repo, repo_id)
            head = find_ref(s, repo, BRANCH, kind="branch") if repo is not None else None
            if head is None or head.commit_id != commit_id:
                return False
            store(s, repo_id, commit_id, doc, vector, stamp)
        return True
    except Exception:
        log.exception("indexing commit %s of repo %s failed; 'adapterkit hub reindex' rebuilds it",
                      commit_id, repo_id)
        return False


def reindex(hub: Hub) -> int:
    """Rebuild the document of every repo from the head of its ``main``; returns how many."""
    with hub.db.read() as s:
        heads = [(r.id, ref.commit_id) for r in s.scalars(select(Repo))
                 if (ref := find_ref(s, r, BRANCH, kind="branch")) is not None]
    return sum(index_commit(hub, repo_id, commit_id) for repo_id, commit_id in heads)


def count_download(s: Session, repo_id: int) -> None:
    s.execute(update(SearchDoc).where(SearchDoc.repo_id == repo_id)
              .values(downloads=SearchDoc.downloads + 1))
