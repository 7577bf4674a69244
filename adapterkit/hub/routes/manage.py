"""Repo management routes: delete a repo, change its visibility, create and delete branches and
tags. Deleting frees no bytes by itself: ``adapterkit hub purge`` removes the blobs that no
remaining commit references."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select

from .. import audit
from ..db.models import Commit, Ref, Repo, now
from ..errors import Conflict, HubError, RevisionNotFound
from ..names import check_part, check_ref
from ..repos import find_ref, get_repo, resolve
from .common import CallerDep, HubDep, remote
from .upload import need_caller

router = APIRouter()


class RepoRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=200)
    organization: str | None = Field(None, max_length=96)
    type: str | None = Field(None, max_length=16)


@router.delete("/api/repos/delete", tags=["manage"])
def delete_repo(body: RepoRef, request: Request, hub: HubDep, caller: CallerDep) -> dict[str, Any]:
    """Delete a repo with its commits, branches and tags (admin)."""
    who = need_caller(caller, "deleting a repo")
    owner = body.organization or (body.name.split("/")[0] if "/" in body.name else who.name)
    repo_id = f"{check_part('owner', owner)}/{check_part('repo', body.name.split('/')[-1])}"
    with hub.db.write() as s:
        repo = get_repo(s, repo_id, who, need="admin")
        commits = s.scalar(select(Commit.id).where(Commit.repo_id == repo.id).limit(1))
        s.delete(repo)
        audit.record(s, who.name, "delete_repo", repo_id, detail=f"head commit {commits}",
                     remote=remote(request))
    return {"deleted": repo_id}


class Settings(BaseModel):
    model_config = ConfigDict(extra="allow")
    private: bool | None = None
    visibility: str | None = Field(None, pattern="^(public|private)$")
    gated: Any = None


@router.put("/api/models/{owner}/{name}/settings", tags=["manage"])
def update_settings(owner: str, name: str, body: Settings, request: Request, hub: HubDep,
                    caller: CallerDep) -> dict[str, Any]:
    """Make a repo public or private (admin)."""
    who = need_caller(caller, "changing settings")
    if body.gated not in (None, False, "false"):
        raise HubError("this hub has no gated repos: use private repos and organisation roles",
                       code="NoGating")
    with hub.db.write() as s:
        repo = get_repo(s, f"{owner}/{name}", who, need="admin")
        if body.visibility is not None:
            repo.private = body.visibility == "private"
        elif body.private is not None:
            repo.private = body.private
        audit.record(s, who.name, "settings", repo.full_name,
                     detail="private" if repo.private else "public", remote=remote(request))
        return {"private": repo.private}


class BranchBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    startingPoint: str | None = Field(None, max_length=128)


class TagBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    tag: str = Field(max_length=128)
    message: str | None = Field(None, max_length=4096)


def _new_ref(hub: Any, request: Request, caller: Any, repo_id: str, kind: str, name: str,
             start: str) -> dict[str, Any]:
    who = need_caller(caller, f"creating a {kind}")
    check_ref(name, kind)
    with hub.db.write() as s:
        repo = get_repo(s, repo_id, who, need="write")
        target = resolve(s, repo, start)
        if find_ref(s, repo, name) is not None:
            raise Conflict(f"{repo_id} already has a branch or tag named {name!r}", code="RefExists")
        s.add(Ref(repo_id=repo.id, kind=kind, name=name, commit_id=target.id, updated_at=now()))
        audit.record(s, who.name, f"create_{kind}", repo_id, revision=name, detail=target.id,
                     remote=remote(request))
    return {"name": name, "targetCommit": target.id}


@router.post("/api/models/{owner}/{name}/branch/{branch}", tags=["manage"])
def create_branch(owner: str, name: str, branch: str, request: Request, hub: HubDep,
                  caller: CallerDep, body: BranchBody | None = None) -> dict[str, Any]:
    start = body.startingPoint if body and body.startingPoint else "main"
    return _new_ref(hub, request, caller, f"{owner}/{name}", "branch", branch, start)


@router.post("/api/models/{owner}/{name}/tag/{revision}", tags=["manage"])
def create_tag(owner: str, name: str, revision: str, body: TagBody, request: Request, hub: HubDep,
               caller: CallerDep) -> dict[str, Any]:
    return _new_ref(hub, request, caller, f"{owner}/{name}", "tag", body.tag, revision)


def _delete_ref(hub: Any, request: Request, caller: Any, repo_id: str, kind: str,
                name: str) -> dict[str, Any]:
    who = need_caller(caller, f"deleting a {kind}")
    if kind == "branch" and name == "main":
        raise HubError("the main branch cannot be deleted: delete the repo instead", code="MainBranch")
    with hub.db.write() as s:
        repo = get_repo(s, repo_id, who, need="write")
        ref = find_ref(s, repo, name, kind=kind)
        if ref is None:
            raise RevisionNotFound(f"Invalid rev id: {name} ({repo_id} has no {kind} of that name)")
        s.execute(delete(Ref).where(Ref.repo_id == repo.id, Ref.kind == kind, Ref.name == name))
        audit.record(s, who.name, f"delete_{kind}", repo_id, revision=name, detail=ref.commit_id,
                     remote=remote(request))
    return {"deleted": name}


@router.delete("/api/models/{owner}/{name}/branch/{branch}", tags=["manage"])
def delete_branch(owner: str, name: str, branch: str, request: Request, hub: HubDep,
                  caller: CallerDep) -> dict[str, Any]:
    return _delete_ref(hub, request, caller, f"{owner}/{name}", "branch", branch)


@router.delete("/api/models/{owner}/{name}/tag/{tag}", tags=["manage"])
def delete_tag(owner: str, name: str, tag: str, request: Request, hub: HubDep,
               caller: CallerDep) -> dict[str, Any]:
    return _delete_ref(hub, request, caller, f"{owner}/{name}", "tag", tag)


__all__ = ["Repo", "router"]
