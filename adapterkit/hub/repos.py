"""Repos as callers see them: lookup with access control, revisions, trees and history.

Access: a user has ``admin`` on their own repos and their role on an organisation's repos; a
token's ``read`` scope caps that at ``read``, and an organisation token acts on that organisation
only. Public repos are readable by anyone. To a caller who may not read it, a private repo is
answered exactly as a missing one: ``RepoNotFound``, 401 without a token and 404 with one.
"""

from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from .accounts import RANK, Caller
from .db.models import Account, Commit, File, Ref, Repo
from .errors import Forbidden, RepoNotFound, RevisionNotFound
from .names import COMMIT_ID, split_repo_id


def role_on(caller: Caller | None, owner: Account) -> str | None:
    """The caller's effective role on repos owned by ``owner`` (the token's limits applied)."""
    if caller is None or (caller.org_id is not None and caller.org_id != owner.id):
        return None
    role = "admin" if owner.id == caller.user_id else caller.roles.get(owner.id)
    if role is None:
        return None
    return "read" if caller.scope == "read" else role


def not_found(repo_id: str, caller: Caller | None) -> RepoNotFound:
    return RepoNotFound(f"Repository {repo_id} not found: check the name, and that your token may "
                        "read it", status=401 if caller is None else 404)


def get_repo(session: Session, repo_id: str, caller: Caller | None, need: str = "read") -> Repo:
    """The repo ``owner/name`` if the caller has ``need`` (read, write or admin) on it."""
    owner_name, _ = split_repo_id(repo_id)
    repo = session.scalar(select(Repo).where(Repo.full_name == repo_id))
    owner = session.scalar(select(Account).where(Account.name == owner_name)) if repo else None
    return check_access(repo_id, repo, owner, caller, need)


def check_access(repo_id: str, repo: Repo | None, owner: Account | None, caller: Caller | None,
                 need: str = "read") -> Repo:
    """``repo`` if it exists and the caller has ``need`` on it (see :func:`get_repo`)."""
    if repo is None or owner is None:
        raise not_found(repo_id, caller)
    role = role_on(caller, owner)
    if repo.private and role is None:
        raise not_found(repo_id, caller)
    if need != "read" and (role is None or RANK[role] < RANK[need]):
        raise forbidden(repo_id, caller, need, role)
    return repo


def forbidden(repo_id: str, caller: Caller | None, need: str, role: str | None) -> Forbidden:
    if caller is None:
        return Forbidden(f"{need} access to {repo_id} needs a token: pass one with "
                         "'Authorization: Bearer <token>'", status=401, code="Unauthorized")
    if caller.scope == "read" and need != "read":
        why = f"the token {caller.token_prefix}... has read scope; {need} access needs a write token"
    else:
        why = f"user {caller.name} has {role or 'no'} access to {repo_id}; this needs {need}"
    return Forbidden(f"{need} access to {repo_id} refused: {why}")


def can_create(caller: Caller | None, owner: Account) -> bool:
    role = role_on(caller, owner)
    return role is not None and RANK[role] >= RANK["write"]


def find_ref(session: Session, repo: Repo, name: str, kind: str | None = None) -> Ref | None:
    q = select(Ref).where(Ref.repo_id == repo.id, Ref.name == name)
    if kind is not None:
        q = q.where(Ref.kind == kind)
    refs = list(session.scalars(q.order_by(Ref.kind)))  # 'branch' before 'tag'
    return refs[0] if refs else None


def resolve(session: Session, repo: Repo, revision: str) -> Commit:
    """The commit a branch, tag or commit id of ``repo`` names."""
    ref = find_ref(session, repo, revision)
    commit = None
    if ref is not None:
        commit = session.get(Commit, ref.commit_id)
    elif COMMIT_ID.fullmatch(revision):
        found = session.get(Commit, revision)
        commit = found if found is not None and found.repo_id == repo.id else None
    if commit is None:
        raise RevisionNotFound(f"Invalid rev id: {revision} (no branch, tag or commit of "
                               f"{repo.full_name} has this name)")
    return commit


def locate(session: Session, repo_id: str, revision: str, path: str,
           caller: Caller | None) -> tuple[Repo, str, File | None]:
    """The repo, the commit id ``revision`` names and the file at ``path`` there (None when the
    commit has no such file), in one query; the same answers as :func:`get_repo` (read access)
    and :func:`resolve` give."""
    split_repo_id(repo_id)
    by_id = COMMIT_ID.fullmatch(revision) is not None
    target = func.coalesce(Ref.commit_id, Commit.id) if by_id else Ref.commit_id
    q = (select(Repo, Account, target, File)
         .join(Account, Account.id == Repo.owner_id)
         .outerjoin(Ref, and_(Ref.repo_id == Repo.id, Ref.name == revision)))
    if by_id:  # a ref of that name wins, as in resolve()
        q = q.outerjoin(Commit, and_(Commit.id == revision, Commit.repo_id == Repo.id))
    q = q.outerjoin(File, and_(File.commit_id == target, File.path == path))
    rows = session.execute(q.where(Repo.full_name == repo_id).order_by(Ref.kind).limit(1)).first()
    repo = check_access(repo_id, rows[0] if rows else None, rows[1] if rows else None, caller)
    assert rows is not None
    if rows[2] is None:
        raise RevisionNotFound(f"Invalid rev id: {revision} (no branch, tag or commit of "
                               f"{repo.full_name} has this name)")
    return repo, str(rows[2]), rows[3]


def files_of(session: Session, commit_id: str) -> dict[str, File]:
    rows = session.scalars(select(File).where(File.commit_id == commit_id).order_by(File.path))
    return {f.path: f for f in rows}


def history(session: Session, commit: Commit, limit: int = 1000) -> list[Commit]:
    """``commit`` and its ancestors, newest first."""
    out = [commit]
    while out[-1].parent_id and len(out) < limit:
        parent = session.get(Commit, out[-1].parent_id)
        if parent is None:
            break
        out.append(parent)
    return out


def owner_of(session: Session, repo: Repo) -> Account:
    owner = session.get(Account, repo.owner_id)
    assert owner is not None  # a foreign key
    return owner
