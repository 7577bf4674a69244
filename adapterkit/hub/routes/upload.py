"""Upload routes: repo creation, YAML validation, preupload, the LFS batch, PUT and verify, and
the NDJSON commit (``parentCommit`` checked)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from starlette.requests import ClientDisconnect

from .. import audit
from ..accounts import RANK, Caller, authenticate_token
from ..artifacts import derive_quietly
from ..blobs import Receiver
from ..catalog import index_commit
from ..commits import HeadMoved, initial_commit, make_commit
from ..db.models import Account, Blob, Repo, Token, Upload
from ..describe import describer
from ..errors import BadName, Conflict, Forbidden, HubError, Unauthorized
from ..metadata import PayloadHasher, front_matter
from ..names import SHA256, check_part, check_ref
from ..repos import can_create, files_of, get_repo, resolve, role_on
from ..settings import Hub
from ..upload import (
    Ticket,
    check_file,
    discard,
    parse_commit,
    protect,
    read_ticket,
    register,
    resolve_lfs,
    ticket,
    upload_mode,
)
from .common import CallerDep, HubDep, base_url, remote

router = APIRouter()


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class CreateRepo(Loose):
    name: str = Field(max_length=200)
    organization: str | None = Field(None, max_length=96)
    private: bool | None = None
    visibility: str | None = Field(None, pattern="^(public|private)$")
    type: str | None = Field(None, max_length=16)


def need_caller(caller: Caller | None, what: str) -> Caller:
    if caller is None:
        raise Unauthorized(f"{what} needs a token: pass 'Authorization: Bearer <token>'")
    return caller


@router.post("/api/repos/create", tags=["upload"])
def create_repo(body: CreateRepo, request: Request, hub: HubDep, caller: CallerDep) -> JSONResponse:
    """Create ``organization/name`` (or the caller's ``name``); 409 when it exists."""
    who = need_caller(caller, "creating a repo")
    if body.type not in (None, "model"):
        raise HubError(f"this hub stores model repos only, not {body.type!r} repos", code="BadRepoType")
    name = body.name.split("/")[-1] if "/" in body.name and body.organization is None else body.name
    owner_name = body.organization or (body.name.split("/")[0] if "/" in body.name else who.name)
    check_part("repo", name)
    repo_id = f"{check_part('owner', owner_name)}/{name}"
    private = body.visibility == "private" if body.visibility else bool(body.private)
    url = f"{base_url(request)}/{repo_id}"
    with hub.db.write() as s:
        owner = s.scalar(select(Account).where(Account.name == owner_name))
        if owner is None or not can_create(who, owner):
            raise Forbidden(f"user {who.name} (token {who.token_prefix}..., {who.scope} scope) may not "
                            f"create repos under {owner_name!r}: that needs write access to it")
        if s.scalar(select(Repo).where(Repo.full_name == repo_id)) is not None:
            return JSONResponse({"error": f"You already created this model repo: {repo_id}", "url": url},
                                status_code=409, headers={"X-Error-Code": "RepoExists",
                                                          "X-Error-Message": f"{repo_id} exists already"})
        repo = Repo(full_name=repo_id, owner_id=owner.id, private=private)
        s.add(repo)
        s.flush()
        initial_commit(s, repo, who.name)
        audit.record(s, who.name, "create_repo", repo_id, detail="private" if private else "public",
                     remote=remote(request))
    return JSONResponse({"url": url, "name": repo_id, "id": str(repo.id)})


class ValidateYaml(Loose):
    content: str = Field(max_length=4 << 20)
    repoType: str | None = None


@router.post("/api/validate-yaml", tags=["upload"])
def validate_yaml(body: ValidateYaml) -> JSONResponse:
    """Check a README's YAML front matter."""
    _card, error = front_matter(body.content)
    if error:
        return JSONResponse({"errors": [{"message": error}], "warnings": [], "error": error},
                            status_code=400, headers={"X-Error-Code": "BadYaml", "X-Error-Message": error})
    return JSONResponse({"errors": [], "warnings": []})


class PreFile(Loose):
    path: str = Field(max_length=4096)
    sample: str = Field("", max_length=4096)
    size: int = Field(ge=0, le=1 << 62)


class Preupload(Loose):
    files: list[PreFile] = Field(max_length=10000)


XET_HINT = ("xet; this hub takes uploads over LFS, not Xet: with huggingface_hub 1.20 or later and "
            "hf_xet installed, set HF_HUB_DISABLE_XET=1 (or the upload fails at xet-write-token)")


def _xet_client(user_agent: str) -> bool:
    """Whether the User-Agent names a huggingface_hub that uploads over Xet when it can (>= 1.20)."""
    m = re.search(r"hf_hub/(\d+)\.(\d+)", user_agent)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (1, 20)  # type: ignore[union-attr]


@router.post("/api/models/{owner}/{name}/preupload/{revision}", tags=["upload"])
def preupload(owner: str, name: str, revision: str, body: Preupload, request: Request, hub: HubDep,
              caller: CallerDep) -> JSONResponse:
    """The upload mode of each file (``regular`` or ``lfs``) and the oid it has now, if any.
    Pickle files, bad paths and oversized files are refused here, before any bytes are sent."""
    with hub.db.read() as s:
        repo = get_repo(s, f"{owner}/{name}", caller, need="write")
        current = files_of(s, resolve(s, repo, check_ref(revision)).id)
    out = []
    for f in body.files:
        check_file(hub, f.path, f.size)
        try:
            sample = base64.b64decode(f.sample, validate=True)
        except (binascii.Error, ValueError):
            raise HubError(f"{f.path}: 'sample' is not valid base64", code="BadRequest") from None
        mode = upload_mode(hub, f.path, f.size, sample)
        have = current.get(f.path)
        oid = None if have is None else (have.blob if mode == "lfs" else have.git_oid)
        out.append({"path": f.path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    lfs = any(f["uploadMode"] == "lfs" for f in out)
    hint = {"X-HF-Warning": XET_HINT} if lfs and _xet_client(request.headers.get("user-agent", "")) else {}
    return JSONResponse({"files": out, "commitOid": None}, headers=hint)


class LfsObject(Loose):
    oid: str = Field(max_length=64)
    size: int = Field(ge=0, le=1 << 62)


class LfsBatch(Loose):
    operation: str
    transfers: list[str] = ["basic"]
    objects: list[LfsObject] = Field(max_length=10000)
    hash_algo: str = "sha256"


@router.post("/{owner}/{name}.git/info/lfs/objects/batch", tags=["upload"])
def lfs_batch(owner: str, name: str, body: LfsBatch, request: Request, hub: HubDep,
              caller: CallerDep) -> JSONResponse:
    """Upload actions for the objects the store lacks; a known object gets none (dedup)."""
    who = need_caller(caller, "uploading")
    if body.operation != "upload" or body.hash_algo != "sha256" or "basic" not in body.transfers:
        raise HubError("this hub's LFS batch serves operation 'upload', hash_algo 'sha256' and the "
                       "'basic' transfer", code="BadLfsRequest")
    base, out = base_url(request), []
    with hub.store.writing(), hub.db.write() as s:
        repo = get_repo(s, f"{owner}/{name}", who, need="write")
        for obj in body.objects:
            if not SHA256.fullmatch(obj.oid):
                raise BadName(f"LFS oid {obj.oid!r} is not a 64-hex SHA-256")
            if obj.size > hub.settings.max_file_bytes:
                raise HubError(f"object {obj.oid} has {obj.size} bytes; this hub stores files of at most "
                               f"{hub.settings.max_file_bytes} bytes", status=413, code="PayloadTooLarge")
            known = s.get(Blob, obj.oid)
            if known is not None and known.size == obj.size and hub.store.exists(obj.oid):
                protect(s, repo.id, obj.oid)
                out.append({"oid": obj.oid, "size": obj.size})
                continue
            t = ticket(hub, repo.id, obj.oid, obj.size, who.token_id)
            out.append({"oid": obj.oid, "size": obj.size, "authenticated": True, "actions": {
                "upload": {"href": f"{base}/api/lfs/upload/{t}", "expires_in": 3600},
                "verify": {"href": f"{base}/api/lfs/verify/{t}", "expires_in": 3600}}})
    return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                        media_type="application/vnd.git-lfs+json")


def _ticket_caller(hub: Hub, text: str) -> Ticket:
    """The ticket, checked again against the token it was issued for (which must still write)."""
    t = read_ticket(hub, text)
    with hub.db.read() as s:
        token, repo = s.get(Token, t.token_id), s.get(Repo, t.repo_id)
        if token is None or token.revoked_at is not None or repo is None:
            raise HubError("the token or repo this upload URL was issued for is gone", status=403,
                           code="BadUploadUrl")
        caller = authenticate_token(s, token)
        owner = s.get(Account, repo.owner_id)
        role = role_on(caller, owner) if owner else None
        if role is None or RANK[role] < RANK["write"]:
            raise HubError("the token this upload URL was issued for may no longer write to the repo",
                           status=403, code="BadUploadUrl")
    return t


@router.put("/api/lfs/upload/{ticket_text}", tags=["upload"],
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}})
async def lfs_put(ticket_text: str, request: Request, hub: HubDep) -> Response:
    """The bytes of one LFS object, hashed as they arrive; refused unless they match the oid."""
    t = await run_in_threadpool(_ticket_caller, hub, ticket_text)
    receiver = Receiver(hub.store, min(t.size, hub.settings.max_file_bytes))
    payload = PayloadHasher()
    try:
        async for chunk in request.stream():
            receiver.write(chunk)
            payload.update(chunk)
    except ClientDisconnect:
        receiver.abort()
        return Response(status_code=400)
    except BaseException:
        receiver.abort()
        raise
    staged = receiver.finish()
    hub.store.check(staged, t.oid, t.size)

    def install() -> None:
        with hub.store.writing(), hub.db.write() as s:
            hub.store.install(staged)
            register(s, staged, payload.digest(), t.repo_id)
    await run_in_threadpool(install)
    return Response(status_code=200)


@router.post("/api/lfs/verify/{ticket_text}", tags=["upload"])
def lfs_verify(ticket_text: str, body: LfsObject, hub: HubDep) -> dict[str, Any]:
    """Confirms that the object is stored with the size the client sent."""
    t = read_ticket(hub, ticket_text)
    with hub.db.read() as s:
        blob = s.get(Blob, t.oid)
    if blob is None or body.oid != t.oid or blob.size != body.size or not hub.store.exists(t.oid):
        raise HubError(f"object {body.oid} ({body.size} bytes) is not stored", status=404,
                       code="ObjectNotFound")
    return {"oid": blob.sha256, "size": blob.size}


def _commit(hub: Hub, repo_id: str, branch: str, body: bytes, who: Caller, where: str | None) -> str:
    parsed = parse_commit(hub, body)
    try:
        with hub.store.writing(), hub.db.write() as s:  # small files become pending uploads first
            repo = get_repo(s, repo_id, who, need="write")
            for staged, payload in parsed.regular:
                hub.store.install(staged)
                register(s, staged, payload, repo.id)
        used = [o for o, _ in parsed.lfs] + [staged.sha256 for staged, _ in parsed.regular]
        for _ in range(20):
            try:
                with hub.store.writing(), hub.db.write() as s:
                    repo = get_repo(s, repo_id, who, need="write")
                    resolve_lfs(s, parsed)
                    commit = make_commit(s, repo, branch, parsed.ops, author=who.name,
                                         message=parsed.summary, description=parsed.description,
                                         parent=parsed.parent, describe=describer(hub, s))
                    s.execute(delete(Upload).where(Upload.repo_id == repo.id, Upload.blob.in_(used)))
                    audit.record(s, who.name, "push", repo_id, revision=branch, detail=commit.id,
                                 path=",".join(op.path for op in parsed.ops)[:1024], remote=where)
                    landed = (repo.id, commit.id)
                index_commit(hub, *landed, branch=branch)  # after the commit, outside its lock
                return landed[1]
            except HeadMoved:
                continue
        raise Conflict(f"{branch} of {repo_id} kept moving while this commit was written; retry")
    finally:
        discard(parsed)


@router.post("/api/models/{owner}/{name}/commit/{revision}", tags=["upload"],
             openapi_extra={"requestBody": {"required": True, "content": {"application/x-ndjson": {
                 "schema": {"type": "string"}}}}})
async def commit(owner: str, name: str, revision: str, request: Request, hub: HubDep,
                 caller: CallerDep) -> dict[str, Any]:
    """One NDJSON commit: a header line, then file, lfsFile, deletedFile and deletedFolder lines."""
    who = need_caller(caller, "committing")
    if request.query_params.get("create_pr") in ("1", "true", "True"):
        raise HubError("this hub has no pull requests: commit to a branch", code="NoPullRequests")
    branch = check_ref(revision)
    body = await request.body()
    cid = await run_in_threadpool(_commit, hub, f"{owner}/{name}", branch, body, who, remote(request))
    await run_in_threadpool(derive_quietly, hub, cid)  # Arrow prototypes and weight embedding
    return {"commitUrl": f"{base_url(request)}/{owner}/{name}/commit/{cid}", "commitOid": cid,
            "pullRequestUrl": None, "success": True}


@router.get("/api/models/{owner}/{name}/xet-write-token/{revision}", include_in_schema=False)
@router.get("/api/models/{owner}/{name}/xet-read-token/{revision}", include_in_schema=False)
def no_xet(owner: str, name: str, revision: str) -> Response:
    msg = ("this hub does not speak the Xet protocol: set HF_HUB_DISABLE_XET=1 so that "
           "huggingface_hub uploads over LFS")
    return JSONResponse({"error": msg}, status_code=501,
                        headers={"X-Error-Code": "XetUnsupported", "X-Error-Message": msg})
