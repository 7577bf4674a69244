"""The audit log: who pushed, pulled, deleted or changed what, and when.

Rows name the actor and the repo as text, so they outlive the repo and the token. A change
(push, deletion, token, membership ...) writes its row in its own transaction. File downloads,
the hot path, queue their ``pull`` rows in :class:`PullLog`, which writes them in batches off the
request path, at least every ``every_s`` seconds and when the server stops.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from .db.models import Audit, now

if TYPE_CHECKING:
    from .db.engine import Database

log = logging.getLogger("adapterkit.hub")

ACTIONS = ("create_repo", "push", "pull", "delete_repo", "settings", "create_branch", "delete_branch",
           "create_tag", "delete_tag", "purge", "expunge", "token_create", "token_revoke", "member")


def record(session: Session, actor: str, action: str, repo: str | None = None, *,
           revision: str | None = None, path: str | None = None, detail: str | None = None,
           remote: str | None = None) -> None:
    assert action in ACTIONS, action
    session.add(Audit(at=now(), actor=actor, action=action, repo=repo, revision=revision,
                      path=path[:1024] if path else None, detail=detail, remote=remote))


def entries(session: Session, repo: str | None = None, action: str | None = None,
            limit: int = 100) -> list[Audit]:
    """The newest ``limit`` entries, newest first."""
    q = select(Audit)
    if repo is not None:
        q = q.where(Audit.repo == repo)
    if action is not None:
        q = q.where(Audit.action == action)
    return list(session.scalars(q.order_by(Audit.id.desc()).limit(limit)))


class PullLog:
    """``pull`` rows waiting to be written: a background thread writes them in one transaction
    every ``every_s`` seconds (sooner once ``batch`` are waiting); :meth:`flush` writes them now
    and :meth:`close` stops the thread after a last write. A failed write keeps its rows for the
    next one. Rows still queued when the process is killed (not stopped) are lost."""

    def __init__(self, db: Database, every_s: float = 0.5, batch: int = 500) -> None:
        self.db, self.every_s, self.batch = db, every_s, batch
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, actor: str, repo: str, *, revision: str, path: str, remote: str | None) -> None:
        row = {"at": now(), "actor": actor, "action": "pull", "repo": repo, "revision": revision,
               "path": path[:1024], "detail": None, "remote": remote}
        with self._lock:
            self._rows.append(row)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="hub-audit", daemon=True)
                self._thread.start()
            if len(self._rows) >= self.batch:
                self._wake.set()

    def flush(self) -> int:
        """Write every queued row now; returns how many were written."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            with self.db.write() as session:
                session.execute(insert(Audit), rows)
        except BaseException:
            with self._lock:
                self._rows[:0] = rows
            raise
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # kept for the next round; the server keeps serving
                log.exception("writing %d audit rows failed", len(self._rows))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception:
            log.exception("writing the last %d audit rows failed", len(self._rows))
