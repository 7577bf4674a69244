"""Derived-artifact routes: the Arrow prototypes of many adapters in one request (no weights), and
"similar adapters" by weight embedding. Both honour read access: a repo the caller may not read
answers exactly as a missing one."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from ..accounts import Caller
from ..artifacts import cosine_ranking, heads_with_artifacts
from ..db.derived import Artifact
from ..errors import HubError, RepoNotFound, RevisionNotFound
from ..names import COMMIT_ID, check_ref
from ..repos import get_repo, resolve
from .common import CallerDep, HubDep
from .info import _visible

router = APIRouter()
MAX_REPOS = 256


class PrototypesRequest(BaseModel):
    repos: list[str] = Field(max_length=MAX_REPOS, description="owner/name or owner/name@revision")


def _split(item: str) -> tuple[str, str]:
    repo, _, rev = item.partition("@")
    rev = rev or "main"
    return repo, rev if COMMIT_ID.fullmatch(rev) else check_ref(rev)


def _one(s: Session, item: str, caller: Caller | None) -> dict[str, Any]:
    repo_id, revision = _split(item)
    try:
        repo = get_repo(s, repo_id, caller)
        commit = resolve(s, repo, revision)
    except (RepoNotFound, RevisionNotFound) as exc:
        return {"repo": item, "error": exc.code, "message": exc.message}
    art = s.get(Artifact, commit.id)
    out: dict[str, Any] = {"repo": repo_id, "revision": revision, "commit": commit.id,
                           "available": art is not None}
    if art is not None:
        out.update(kind=art.kind, sites=art.sites, sha256=art.prototypes_sha256,
                   prototypes=base64.b64encode(art.prototypes).decode(),
                   embedding_version=art.embedding_version)
    return out


@router.post("/api/adapterkit/prototypes", tags=["artifacts"])
def prototypes(body: PrototypesRequest, hub: HubDep, caller: CallerDep) -> dict[str, Any]:
    """The Arrow prototypes of each repo (``owner/name[@revision]``, at most 256): a base64
    safetensors file per repo (one float32 (in,) vector per site; the sigmas in its metadata)
    and its SHA-256. A repo the caller cannot read, or a missing one, gets ``error``
    ``RepoNotFound``; a commit without artifacts (not a LoRA adapter) ``available: false``."""
    if len(set(body.repos)) != len(body.repos):
        raise HubError("'repos' names a repo twice", code="BadRequest")
    with hub.db.read() as s:
        return {"results": [_one(s, item, caller) for item in body.repos]}


@router.get("/api/adapterkit/similar/{owner}/{name}", tags=["artifacts"])
def similar(owner: str, name: str, hub: HubDep, caller: CallerDep, revision: str = "main",
            limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    """The adapters (heads of ``main`` the caller can read) whose weight embeddings are closest
    to this repo's at ``revision``, by cosine similarity."""
    with hub.db.read() as s:
        repo_id, revision = _split(f"{owner}/{name}@{revision}")
        repo = get_repo(s, repo_id, caller)
        commit = resolve(s, repo, revision)
        art = s.get(Artifact, commit.id)
        if art is None:
            raise HubError(f"{repo.full_name}@{revision} has no weight embedding: only LoRA adapters "
                           "(adapterkit or PEFT format) get one at upload", status=404,
                           code="NoArtifacts")
        pool = [(r.full_name, a.embedding) for r, a in heads_with_artifacts(s)
                if r.id != repo.id and a.embedding_version == art.embedding_version
                and _visible(s, caller, r)]
    ranked = cosine_ranking(art.embedding, pool)[:limit]
    return {"repo": repo.full_name, "commit": commit.id,
            "similar": [{"repo_id": rid, "score": score} for rid, score in ranked]}
