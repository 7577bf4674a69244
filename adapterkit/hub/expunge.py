"""Expunging a file from a repo's whole history: the one deliberate exception to immutable
commits, for content that must go (personal data, a leaked secret).

Deleting a file in a new commit leaves it in the older commits, as on the Hugging Face Hub.
:func:`expunge` removes the path from every commit of the repo (commit ids stay; their trees
and extracted metadata lose the path, and the metadata lists it under ``expunged``), so every
revision answers ``EntryNotFound`` for it; the next ``purge`` deletes the bytes unless another
file of any repo holds the same content.
"""

from __future__ import annotations

from sqlalchemy import select

from . import audit
from .artifacts import rederive
from .commits import Entry
from .db.models import Commit, File, Repo
from .describe import describer
from .errors import EntryNotFound, RepoNotFound
from .names import check_path, split_repo_id
from .repos import files_of
from .settings import Hub


def expunge(hub: Hub, repo_id: str, path: str, actor: str = "admin") -> int:
    """Remove ``path`` from every commit of ``repo_id``; returns how many commits held it."""
    split_repo_id(repo_id)
    check_path(path)
    with hub.db.write() as s:
        repo = s.scalar(select(Repo).where(Repo.full_name == repo_id))
        if repo is None:
            raise RepoNotFound(f"Repository {repo_id} not found")
        ids = select(Commit.id).where(Commit.repo_id == repo.id)
        rows = list(s.scalars(select(File).where(File.commit_id.in_(ids), File.path == path)))
        if not rows:
            raise EntryNotFound(f"no commit of {repo_id} holds {path}")
        for row in rows:
            s.delete(row)
        s.flush()
        describe = describer(hub, s)
        for commit_id in sorted({r.commit_id for r in rows}):
            commit = s.get_one(Commit, commit_id)
            tree = {p: Entry(f.blob, f.size, f.git_oid, f.lfs) for p, f in files_of(s, commit_id).items()}
            meta = describe(tree)
            meta["expunged"] = sorted({*(commit.meta or {}).get("expunged", []), path})
            commit.meta = meta
        audit.record(s, actor, "expunge", repo_id, path=path, detail=f"{len(rows)} commit(s)")
    rederive(hub, sorted({r.commit_id for r in rows}))  # artifacts follow the trees
    return len(rows)
