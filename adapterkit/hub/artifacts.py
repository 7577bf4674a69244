"""Derived artifacts per commit: computed after a commit lands, read by the prototypes and
"similar adapters" endpoints.

:func:`derive_commit` reads the commit's ``adapter_config.json`` and weights from the blob store,
computes the artifacts (:mod:`adapterkit.hub.derived`) outside any database transaction, and
stores one :class:`~adapterkit.hub.db.derived.Artifact` row. A commit whose config and weights
blobs were seen before (the same ``source`` hash, in any repo) reuses that row's artifacts. The
row is deleted with its commit by the foreign key (purge of unreachable commits, repo deletion),
and :func:`rederive` recomputes it after an expunge changed the commit's tree.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db.derived import Artifact
from .db.models import Commit, File, Ref, Repo, now
from .derived import EMBEDDING_VERSION, KIND, WEIGHT_FILES, derive_files, lora_format
from .settings import Hub

log = logging.getLogger("adapterkit.hub")


def _inputs(session: Session, commit_id: str) -> tuple[str, str] | None:
    """(config blob, weights blob) of a LoRA commit, or None."""
    rows = {f.path: f.blob for f in session.scalars(select(File).where(
        File.commit_id == commit_id, File.path.in_(["adapter_config.json", *WEIGHT_FILES.values()])))}
    return (rows["adapter_config.json"], rows[w]) if "adapter_config.json" in rows and \
        (w := next((p for p in WEIGHT_FILES.values() if p in rows), None)) else None


def _lora_config(hub: Hub, blob: str) -> bool:
    try:
        with hub.store.open(blob) as f:
            config = json.loads(f.read(16 << 20))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and lora_format(config) is not None


def derive_commit(hub: Hub, commit_id: str) -> Artifact | None:
    """Compute and store the artifacts of ``commit_id`` (None: not a LoRA commit, or gone)."""
    with hub.db.read() as s:
        found = _inputs(s, commit_id)
        if found is None or s.get(Artifact, commit_id) is not None:
            return s.get(Artifact, commit_id) if found else None
        source = hashlib.sha256(f"{found[0]}:{found[1]}".encode()).hexdigest()
        known = s.scalar(select(Artifact).where(Artifact.source == source).limit(1))
    if known is not None:
        row = Artifact(commit_id=commit_id, kind=known.kind, source=source, sites=known.sites,
                       prototypes=known.prototypes, prototypes_sha256=known.prototypes_sha256,
                       embedding=known.embedding, embedding_version=known.embedding_version,
                       seconds=0.0, created_at=now())
    else:
        if not _lora_config(hub, found[0]):
            return None
        derived = derive_files(hub.store.path(found[0]), hub.store.path(found[1]))
        if derived is None:
            return None
        data = derived.prototype_bytes()
        row = Artifact(commit_id=commit_id, kind=KIND, source=source, sites=len(derived.prototypes),
                       prototypes=data, prototypes_sha256=hashlib.sha256(data).hexdigest(),
                       embedding=derived.embedding, embedding_version=EMBEDDING_VERSION,
                       seconds=derived.seconds, created_at=now())
    try:
        with hub.db.write() as s:
            if s.get(Commit, commit_id) is None or s.get(Artifact, commit_id) is not None:
                return None  # purged meanwhile, or another process stored it first
            s.add(row)
    except IntegrityError:
        return None
    return row


def derive_quietly(hub: Hub, commit_id: str) -> None:
    """:func:`derive_commit` for the upload path: a failure is logged, the commit stays."""
    try:
        derive_commit(hub, commit_id)
    except Exception:  # the commit landed; its artifacts are an extra
        log.exception("deriving the artifacts of commit %s failed", commit_id)


def rederive(hub: Hub, commit_ids: list[str]) -> None:
    """Drop and recompute the artifacts of commits whose trees changed (after an expunge)."""
    with hub.db.write() as s:
        s.execute(delete(Artifact).where(Artifact.commit_id.in_(commit_ids)))
    for cid in commit_ids:
        derive_quietly(hub, cid)


def heads_with_artifacts(session: Session) -> list[tuple[Repo, Artifact]]:
    """Every repo whose ``main`` head has artifacts, with them."""
    q = (select(Repo, Artifact).join(Ref, (Ref.repo_id == Repo.id) & (Ref.kind == "branch")
                                     & (Ref.name == "main"))
         .join(Artifact, Artifact.commit_id == Ref.commit_id).order_by(Repo.full_name))
    return [(r, a) for r, a in session.execute(q).tuples()]


def cosine_ranking(query: list[float], candidates: list[tuple[str, list[float]]]) -> list[tuple[str, float]]:
    """Candidates by cosine similarity of their embeddings to ``query``, best first (exact)."""
    if not candidates:
        return []
    q = np.asarray(query, dtype=np.float64)
    m = np.asarray([e for _, e in candidates], dtype=np.float64)
    norms = np.linalg.norm(m, axis=1) * max(float(np.linalg.norm(q)), 1e-300)
    scores = (m @ q) / np.maximum(norms, 1e-300)
    order = np.argsort(-scores, kind="stable")
    return [(candidates[i][0], float(scores[i])) for i in order]
