"""The audit log: who pushed, pulled, deleted or changed what, and when.

Rows name the actor and the repo as text, so they outlive the repo and the token.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db.models import Audit, now

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
