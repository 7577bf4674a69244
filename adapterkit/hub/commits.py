"""Making commits: apply operations to the head's tree, store the new commit, move the branch.

A commit is immutable: a 40-hex id (a SHA-1 over its parent, tree, author, message, time and a
random nonce), its parent, its path -> blob map, its author and message. The branch moves by
compare-and-swap (``UPDATE refs ... WHERE commit_id = <the head we built on>``): when another
commit landed first, a commit that named its ``parentCommit`` is refused with 412 and one that did
not is rebuilt on the new head, so no update is ever lost.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from .db.models import Commit, File, Ref, Repo, now
from .errors import BadName, EntryNotFound, RevisionNotFound, StaleParent
from .repos import files_of, find_ref


@dataclass(frozen=True)
class Entry:
    """A file in a tree."""

    blob: str
    size: int
    git_oid: str
    lfs: bool


@dataclass(frozen=True)
class Op:
    """``add`` (with its entry), ``delete`` (a file) or ``delete_folder``."""

    kind: str
    path: str
    entry: Entry | None = None


class HeadMoved(Exception):
    """The branch moved while the commit was built; the caller retries on the new head."""


def git_oid(content: bytes) -> str:
    """The git blob id of ``content``."""
    return hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def apply(tree: dict[str, Entry], ops: list[Op]) -> dict[str, Entry]:
    """The tree after ``ops``, in order; a missing path to delete raises EntryNotFound."""
    out = dict(tree)
    for op in ops:
        if op.kind == "add":
            assert op.entry is not None
            clash = [p for p in _parents(op.path) if p in out]
            if clash or any(p.startswith(op.path + "/") for p in out):
                raise BadName(f"cannot add {op.path!r}: "
                              + (f"{clash[0]!r} is a file" if clash else "it is a folder"))
            out[op.path] = op.entry
        elif op.kind == "delete":
            if op.path not in out:
                raise EntryNotFound(f"cannot delete {op.path!r}: no such file at the head of the branch")
            del out[op.path]
        else:
            prefix = op.path.rstrip("/") + "/"
            gone = [p for p in out if p.startswith(prefix)]
            if not gone:
                raise EntryNotFound(f"cannot delete folder {op.path!r}: no file lies under it")
            for p in gone:
                del out[p]
    return out


def commit_id(parent: str | None, tree: dict[str, Entry], author: str, message: str,
              description: str, when: str) -> str:
    body = json.dumps({"parent": parent, "tree": {p: e.blob for p, e in sorted(tree.items())},
                       "author": author, "message": message, "description": description,
                       "time": when, "nonce": secrets.token_hex(8)}, sort_keys=True)
    return hashlib.sha1(body.encode()).hexdigest()


def make_commit(session: Session, repo: Repo, branch: str, ops: list[Op], *, author: str,
                message: str, description: str = "", parent: str | None = None,
                describe: Callable[[dict[str, Entry]], dict[str, Any]] | None = None) -> Commit:
    """Commit ``ops`` on ``branch``. ``parent`` (the client's ``parentCommit``) must be the head;
    raises :class:`HeadMoved` when the branch moved under a commit that named no parent."""
    ref = find_ref(session, repo, branch, kind="branch")
    if ref is None:
        raise RevisionNotFound(f"Invalid rev id: {branch} (commits go to a branch of {repo.full_name}; "
                               "create it first)")
    head = ref.commit_id
    if parent is not None and parent != head:
        raise StaleParent(f"parentCommit {parent} is not the head of {branch} ({head}): a commit has "
                          "landed since; fetch the new head and retry", commit=head)
    tree = {p: Entry(f.blob, f.size, f.git_oid, f.lfs) for p, f in files_of(session, head).items()}
    new_tree = apply(tree, ops)
    when = now()
    cid = commit_id(head, new_tree, author, message, description, when.isoformat())
    meta = describe(new_tree) if describe else {}
    session.add(Commit(id=cid, repo_id=repo.id, parent_id=head, author=author, message=message,
                       description=description, created_at=when, meta=meta))
    session.flush()
    session.add_all(File(commit_id=cid, path=p, blob=e.blob, size=e.size, git_oid=e.git_oid, lfs=e.lfs)
                    for p, e in new_tree.items())
    moved = session.execute(
        update(Ref).where(Ref.repo_id == repo.id, Ref.kind == "branch", Ref.name == branch,
                          Ref.commit_id == head).values(commit_id=cid, updated_at=when))
    if getattr(moved, "rowcount", 1) != 1:
        if parent is not None:
            raise StaleParent(f"parentCommit {parent} is no longer the head of {branch}: another "
                              "commit landed while this one was written; fetch the new head and retry")
        raise HeadMoved(branch)
    return session.get_one(Commit, cid)


def initial_commit(session: Session, repo: Repo, author: str) -> Commit:
    """The empty first commit of a new repo, on ``main``."""
    when = now()
    cid = commit_id(None, {}, author, "initial commit", "", when.isoformat())
    commit = Commit(id=cid, repo_id=repo.id, parent_id=None, author=author, message="initial commit",
                    description="", created_at=when, meta={})
    session.add(commit)
    session.flush()
    session.add(Ref(repo_id=repo.id, kind="branch", name="main", commit_id=cid, updated_at=when))
    return commit
