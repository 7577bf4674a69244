"""Info routes: model info (with ``siblings``), listing and search, refs, commit history, whoami."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..accounts import Caller
from ..db.models import Account, Commit, Ref, Repo
from ..errors import RepoNotFound, Unauthorized
from ..metadata import tags as derived_tags
from ..repos import files_of, get_repo, history, owner_of, resolve, role_on
from .common import CallerDep, HubDep, base_url, iso
from .files import file_entry

router = APIRouter()


def model_info(s: Session, repo: Repo, commit: Commit, full: bool = True) -> dict[str, Any]:
    owner = owner_of(s, repo)
    meta = commit.meta or {}
    card = meta.get("card") or {}
    info: dict[str, Any] = {
        "_id": str(repo.id), "id": repo.full_name, "modelId": repo.full_name, "author": owner.name,
        "sha": commit.id, "lastModified": iso(commit.created_at), "createdAt": iso(repo.created_at),
        "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
        "library_name": card.get("library_name") or ("peft" if (meta.get("adapter") or {}).get("format")
                                                     == "peft" else None),
        "tags": derived_tags(meta), "pipeline_tag": (card.get("tasks") or [None])[0],
        "adapterkit": meta,
    }
    if full:
        siblings = []
        for f in files_of(s, commit.id).values():
            entry = file_entry(f)
            sib: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.git_oid,
                                   "sha256": f.blob}
            if "lfs" in entry:
                lfs = entry["lfs"]
                sib["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sib)
        info["siblings"] = siblings
        info["cardData"] = card
    return info


@router.get("/api/models/{owner}/{name}", tags=["info"])
def get_model(owner: str, name: str, hub: HubDep, caller: CallerDep) -> dict[str, Any]:
    """Model info at the head of ``main``."""
    return get_revision(owner, name, "main", hub, caller)


@router.get("/api/models/{owner}/{name}/revision/{revision}", tags=["info"])
def get_revision(owner: str, name: str, revision: str, hub: HubDep, caller: CallerDep) -> dict[str, Any]:
    """Model info at a branch, tag or commit: ``sha``, ``siblings`` and the extracted metadata."""
    with hub.db.read() as s:
        repo = get_repo(s, f"{owner}/{name}", caller)
        return model_info(s, repo, resolve(s, repo, revision))


@router.get("/api/models/{name}", tags=["info"], include_in_schema=False)
def get_model_without_owner(name: str, caller: CallerDep) -> dict[str, Any]:
    raise RepoNotFound(f"Repository {name} not found: repo ids here are 'owner/name'",
                       status=401 if caller is None else 404)


def _visible(s: Session, caller: Caller | None, repo: Repo) -> bool:
    return not repo.private or role_on(caller, owner_of(s, repo)) is not None


@router.get("/api/models/{owner}/{name}/refs", tags=["info"])
def refs(owner: str, name: str, hub: HubDep, caller: CallerDep, include_prs: bool = False) -> dict[str, Any]:
    """Branches and tags."""
    with hub.db.read() as s:
        repo = get_repo(s, f"{owner}/{name}", caller)
        rows = list(s.scalars(select(Ref).where(Ref.repo_id == repo.id).order_by(Ref.name)))
    out: dict[str, Any] = {"branches": [], "tags": [], "converts": []}
    for r in rows:
        key, ref = ("branches", "heads") if r.kind == "branch" else ("tags", "tags")
        out[key].append({"name": r.name, "ref": f"refs/{ref}/{r.name}", "targetCommit": r.commit_id})
    if include_prs:
        out["pullRequests"] = []
    return out


@router.get("/api/models/{owner}/{name}/commits/{revision}", tags=["info"])
def commits(owner: str, name: str, revision: str, request: Request, hub: HubDep,
            caller: CallerDep) -> list[dict[str, Any]]:
    """The history of a revision, newest first."""
    with hub.db.read() as s:
        repo = get_repo(s, f"{owner}/{name}", caller)
        chain = history(s, resolve(s, repo, revision))
    base = base_url(request)
    return [{"id": c.id, "title": c.message, "message": c.description, "authors": [{"user": c.author}],
             "date": iso(c.created_at), "parents": [c.parent_id] if c.parent_id else [],
             "url": f"{base}/{owner}/{name}/commit/{c.id}"} for c in chain]


@router.get("/api/whoami-v2", tags=["info"])
def whoami(hub: HubDep, caller: CallerDep) -> dict[str, Any]:
    """The token's user, organisations (with roles) and scope."""
    if caller is None:
        raise Unauthorized("Invalid credentials in Authorization header: no token was sent",
                           header="Invalid credentials in Authorization header")
    with hub.db.read() as s:
        orgs = [{"type": "org", "name": a.name, "roleInOrg": caller.roles[a.id]}
                for a in s.scalars(select(Account).where(Account.id.in_(list(caller.roles))))]
        limited = s.get(Account, caller.org_id) if caller.org_id else None
    return {"type": "user", "id": str(caller.user_id), "name": caller.name, "fullname": caller.name,
            "orgs": sorted(orgs, key=lambda o: o["name"]),
            "auth": {"type": "access_token", "accessToken": {
                "displayName": caller.token_prefix, "role": caller.scope,
                "org": limited.name if limited else None}}}
