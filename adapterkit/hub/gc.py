"""Verified deletion: ``purge`` removes what no remaining commit references, ``verify`` rehashes
the store.

``purge``, under the store's exclusive lock:

1. drops commits that no branch or tag reaches any more (after a branch, tag or repo is deleted);
2. drops uploads that were never committed within the grace period;
3. deletes every blob row that no file and no pending upload references, then its file;
4. deletes files in the store that have no blob row, and stale staging files.

After it, the bytes of a deleted repo are in no file of the store, unless another repo still
holds the same content.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, exists, select

from ..io.hub.cache import sha256_file
from . import audit
from .db.models import Blob, Commit, File, Ref, Upload, now
from .names import SHA256
from .settings import Hub


@dataclass
class PurgeReport:
    commits: int = 0
    uploads: int = 0
    blobs: int = 0
    bytes: int = 0
    orphans: int = 0
    staging: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def unreachable_commits(session: Any) -> list[str]:
    """Commits that no branch or tag of their repo reaches through parents."""
    parent: dict[str, str | None] = {}
    by_repo: dict[int, list[str]] = defaultdict(list)
    for cid, pid, rid in session.execute(select(Commit.id, Commit.parent_id, Commit.repo_id)).tuples():
        parent[cid] = pid
        by_repo[rid].append(cid)
    reached: set[str] = set()
    for (target,) in session.execute(select(Ref.commit_id)).tuples():
        node: str | None = target
        while node is not None and node not in reached and node in parent:
            reached.add(node)
            node = parent[node]
    return [c for ids in by_repo.values() for c in ids if c not in reached]


def _old(path: os.PathLike | str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False


def purge(hub: Hub, grace_s: float | None = None, actor: str = "admin") -> PurgeReport:
    """Remove every blob no remaining commit references (see the module doc)."""
    grace = hub.settings.upload_grace_s if grace_s is None else grace_s
    report = PurgeReport()
    with hub.store.collecting():
        with hub.db.write() as s:
            dead = unreachable_commits(s)
            for i in range(0, len(dead), 500):
                s.execute(delete(Commit).where(Commit.id.in_(dead[i:i + 500])))
            report.commits = len(dead)
            cutoff = now() - dt.timedelta(seconds=grace)
            expired = list(s.scalars(select(Upload.id).where(Upload.created_at <= cutoff)))
            for i in range(0, len(expired), 500):
                s.execute(delete(Upload).where(Upload.id.in_(expired[i:i + 500])))
            report.uploads = len(expired)
            unused = list(s.execute(select(Blob.sha256, Blob.size).where(
                ~exists().where(File.blob == Blob.sha256),
                ~exists().where(Upload.blob == Blob.sha256))).tuples())
            names = [sha for sha, _ in unused]
            for i in range(0, len(names), 500):
                s.execute(delete(Blob).where(Blob.sha256.in_(names[i:i + 500])))
            report.blobs, report.bytes = len(unused), sum(size for _, size in unused)
            audit.record(s, actor, "purge", None, detail=str(report.as_dict()))
        for sha in names:
            hub.store.remove(sha)
        report.orphans, report.staging = _sweep(hub, time.time() - grace)
    return report


def collect_expired(hub: Hub, grace_s: float | None = None) -> int:
    """What a running server does on its own, every ``--collect-every`` seconds: drop uploads
    older than the grace period that no commit used, delete those of their blobs that nothing
    else references, and stale staging files. Returns the blobs deleted. (Deleted repos and refs
    keep their bytes until ``purge``.)"""
    grace = hub.settings.upload_grace_s if grace_s is None else grace_s
    cutoff = now() - dt.timedelta(seconds=grace)
    with hub.store.collecting():
        with hub.db.write() as s:
            old = select(Upload.id, Upload.blob).where(Upload.created_at <= cutoff)
            expired = list(s.execute(old).tuples())
            ids, blobs = [i for i, _ in expired], sorted({b for _, b in expired})
            for i in range(0, len(ids), 500):
                s.execute(delete(Upload).where(Upload.id.in_(ids[i:i + 500])))
            unused = list(s.scalars(select(Blob.sha256).where(
                Blob.sha256.in_(blobs), ~exists().where(File.blob == Blob.sha256),
                ~exists().where(Upload.blob == Blob.sha256)))) if blobs else []
            if unused:
                s.execute(delete(Blob).where(Blob.sha256.in_(unused)))
        for sha in unused:
            hub.store.remove(sha)
        for path in list(hub.store.staging.iterdir()):
            if _old(path, time.time() - grace):
                path.unlink(missing_ok=True)
    return len(unused)


def _sweep(hub: Hub, cutoff: float) -> tuple[int, int]:
    """Delete store files without a blob row (the exclusive lock is held, so no writer is between
    moving a file in and committing its row) and staging files older than ``cutoff``."""
    with hub.db.read() as s:
        known = set(s.scalars(select(Blob.sha256)))
    orphans = 0
    for path in list(hub.store.names()):
        if path.name not in known:
            path.unlink(missing_ok=True)
            orphans += 1
    staging = 0
    for path in list(hub.store.staging.iterdir()):
        if _old(path, cutoff):
            path.unlink(missing_ok=True)
            staging += 1
    return orphans, staging


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)  # rows purge would remove

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphaned)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify(hub: Hub) -> VerifyReport:
    """Rehash every blob; report missing, corrupt and orphaned ones (and unreferenced rows)."""
    report = VerifyReport()
    with hub.db.read() as s:
        rows = dict(s.execute(select(Blob.sha256, Blob.size)).tuples().all())
        report.unreferenced = sorted(s.scalars(select(Blob.sha256).where(
            ~exists().where(File.blob == Blob.sha256), ~exists().where(Upload.blob == Blob.sha256))))
    for sha, size in sorted(rows.items()):
        path = hub.store.path(sha)
        if not path.is_file():
            report.missing.append(sha)
            continue
        digest, actual = sha256_file(path)
        report.checked += 1
        report.bytes += actual
        if digest != sha or actual != size:
            report.corrupt.append(sha)
    candidates = [p for p in hub.store.names() if p.name not in rows]
    if candidates:  # confirm under the lock: a writer may have been between file and row
        with hub.store.collecting(), hub.db.read() as s:
            now_known = set(s.scalars(select(Blob.sha256).where(
                Blob.sha256.in_([p.name for p in candidates if SHA256.fullmatch(p.name)]))))
            report.orphaned = sorted(str(p.relative_to(hub.store.root)) for p in candidates
                                     if p.exists() and p.name not in now_known)
    return report
