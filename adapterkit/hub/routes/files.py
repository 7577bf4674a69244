"""File routes: ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{path}``, the tree listing and
``paths-info``.

A resolve answer carries ``X-Repo-Commit``, the content's SHA-256 as ``ETag`` and its size; a
``Range`` request gets 206. A missing file answers ``EntryNotFound`` with ``X-Repo-Commit``, which
the Hugging Face client caches as "known missing" for that commit.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, BinaryIO
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from ..catalog import count_download
from ..db.models import File
from ..errors import EntryNotFound, HubError, RepoNotFound
from ..names import check_path
from ..repos import files_of, get_repo, locate, resolve
from ..zerocopy import ZEROCOPY
from .common import CallerDep, HubDep, actor, page_link, remote

router = APIRouter()
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
PAGE = 1000
DOWNLOAD_FILE = "adapter_config.json"  # a full fetch of this file counts as a download of the repo


class BlobResponse(FileResponse):
    """A blob's bytes from an open file: whole (200) or one range (206), handed to the server
    with ``http.response.zerocopysend`` where it offers that (see :mod:`..zerocopy`), else read
    in 1 MiB chunks. Any other request (HEAD, several ranges, a bad one) is FileResponse's."""

    chunk_size = 1 << 20

    def __init__(self, file: BinaryIO, headers: dict[str, str]) -> None:
        self.file = file
        super().__init__(file.name, headers=headers, stat_result=os.fstat(file.fileno()))

    def _span(self, scope: Scope, size: int) -> tuple[int, int, int] | None:
        """(status, start, end) of a single-range or whole answer; None for FileResponse's."""
        req = Headers(scope=scope)
        ranged, if_range = req.get("range"), req.get("if-range")
        if ranged is None or (if_range is not None and not self._should_use_range(if_range)):
            return 200, 0, size
        try:
            spans = self._parse_range_header(ranged, size)
        except (MalformedRangeHeader, RangeNotSatisfiable):
            return None
        return (206, *spans[0]) if len(spans) == 1 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.file:
            size = os.fstat(self.file.fileno()).st_size
            span = self._span(scope, size) if scope["type"] == "http" and scope["method"] == "GET" \
                and ZEROCOPY in scope.get("extensions", {}) else None
            if span is None:
                await super().__call__(scope, receive, send)
                return
            status, start, end = span
            headers = MutableHeaders(raw=list(self.raw_headers))
            if status == 206:
                headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            headers["content-length"] = str(end - start)
            await send({"type": "http.response.start", "status": status, "headers": headers.raw})
            await send({"type": ZEROCOPY, "file": self.file, "offset": start, "count": end - start,
                        "more_body": False})


def _check_range(header: str | None, size: int) -> None:
    """Refuse a Range header this server cannot answer with 206 (416 or 400, with a code)."""
    if header is None:
        return
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise HubError(f"unsupported Range {header!r}: use one range, 'bytes=START-[END]' or "
                       "'bytes=-SUFFIX'", code="BadRange")
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    if (start is not None and start >= size) or (start is not None and end is not None and end < start) \
            or (start is None and end == 0):
        raise HubError(f"Range {header!r} does not fit a file of {size} bytes", status=416,
                       code="RangeNotSatisfiable")


def file_headers(f: File, commit: str) -> dict[str, str]:
    return {"X-Repo-Commit": commit, "ETag": f'"{f.blob}"', "X-Linked-Etag": f'"{f.blob}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream", "X-Linked-Size": str(f.size)}


@router.head("/{owner}/{name}/resolve/{revision}/{path:path}", tags=["files"], response_class=Response,
             operation_id="head_file")
@router.get("/{owner}/{name}/resolve/{revision}/{path:path}", tags=["files"], response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {}},
            operation_id="get_file")
def resolve_file(owner: str, name: str, revision: str, path: str, request: Request, hub: HubDep,
                 caller: CallerDep) -> Response:
    """A file's bytes (GET, Range answered with 206) or its metadata alone (HEAD)."""
    repo_id = f"{owner}/{name}"
    with hub.db.read() as s:  # one query: the repo, its owner, the commit and the file
        repo, commit_id, f = locate(s, repo_id, revision, path, caller)
    check_path(path)
    if f is None:
        raise EntryNotFound(f"{path} does not exist at {revision} of {repo_id}", commit=commit_id)
    headers = file_headers(f, commit_id)
    if request.method == "HEAD":
        return Response(status_code=200, headers={**headers, "Content-Length": str(f.size)})
    ranged = request.headers.get("range")
    _check_range(ranged, f.size)
    try:
        blob = hub.store.open(f.blob)
    except FileNotFoundError:
        raise HubError(f"the blob of {path} is missing from the store; run 'adapterkit hub verify'",
                       status=500, code="BlobMissing") from None
    if ranged is None or ranged.strip().startswith("bytes=0-"):
        hub.pulls.add(actor(caller), repo_id, revision=commit_id, path=path, remote=remote(request))
        if path == DOWNLOAD_FILE:  # the search's download count is exact (the audit row is queued)
            with hub.db.write() as s:
                count_download(s, repo.id)
    return BlobResponse(blob, headers=headers)


@router.api_route("/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"], tags=["files"],
                  include_in_schema=False)
def resolve_without_owner(name: str, revision: str, path: str, caller: CallerDep) -> Response:
    raise RepoNotFound(f"Repository {name} not found: repo ids here are 'owner/name'",
                       status=401 if caller is None else 404)


def tree_entries(files: dict[str, File], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree entries under ``prefix`` (all of them, or the direct children): files with their
    git oid, SHA-256 and LFS block, folders with a synthetic oid."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    out: list[dict[str, Any]] = []
    folders: set[str] = set()
    for path, f in files.items():
        if not path.startswith(base):
            continue
        rest = path[len(base):]
        parts = rest.split("/")
        for i in range(1, len(parts)):
            if recursive or i == 1:
                folders.add(base + "/".join(parts[:i]))
        if recursive or len(parts) == 1:
            out.append(file_entry(f))
    out += [{"type": "directory", "path": d, "oid": _folder_oid(d), "size": 0} for d in folders]
    return sorted(out, key=lambda e: e["path"])


def _folder_oid(path: str) -> str:
    import hashlib

    return hashlib.sha1(f"tree {path}".encode()).hexdigest()


def file_entry(f: File) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size, "oid": f.git_oid,
                             "sha256": f.blob}
    if f.lfs:
        from ..commits import lfs_pointer

        entry["lfs"] = {"oid": f.blob, "size": f.size, "pointerSize": len(lfs_pointer(f.blob, f.size))}
    return entry


@router.get("/api/models/{owner}/{name}/tree/{revision}", tags=["info"])
@router.get("/api/models/{owner}/{name}/tree/{revision}/{path:path}", tags=["info"])
def tree(owner: str, name: str, revision: str, request: Request, hub: HubDep, caller: CallerDep,
         path: str = "", recursive: bool = False, expand: bool = False,
         cursor: Annotated[int, Query(ge=0, le=1 << 62)] = 0) -> JSONResponse:
    """The files (and folders) of a revision, 1000 per page (``Link`` header for the next)."""
    with hub.db.read() as s:
        repo = get_repo(s, f"{owner}/{name}", caller)
        commit = resolve(s, repo, revision)
        if path:
            check_path(path)
        files = files_of(s, commit.id)
    entries = tree_entries(files, path, recursive)
    if path and not entries and path not in files:
        raise EntryNotFound(f"{path} is not a folder at {revision} of {owner}/{name}", commit=commit.id)
    page = entries[cursor:cursor + PAGE]
    headers = {"X-Repo-Commit": commit.id}
    if cursor + PAGE < len(entries):
        headers.update(page_link(request, cursor + PAGE))
    return JSONResponse(page, headers=headers)


@router.post("/api/models/{owner}/{name}/paths-info/{revision}", tags=["info"],
             openapi_extra={"requestBody": {"content": {"application/x-www-form-urlencoded": {
                 "schema": {"type": "object", "properties": {
                     "paths": {"type": "array", "items": {"type": "string"}},
                     "expand": {"type": "boolean"}}}}}}})
async def paths_info(owner: str, name: str, revision: str, request: Request, hub: HubDep,
                     caller: CallerDep) -> JSONResponse:
    """Entries for the given paths (files, or folders that hold files); unknown paths are left out."""
    body = (await request.body()).decode("utf-8", "replace")
    if request.headers.get("content-type", "").startswith("application/json"):
        import json

        try:
            data = json.loads(body or "{}")
            wanted = [str(p) for p in (data.get("paths") or [])] if isinstance(data, dict) else []
        except ValueError:
            raise HubError("paths-info: the body is not valid JSON", code="BadJson") from None
    else:
        wanted = parse_qs(body).get("paths", [])
    with hub.db.read() as s:
        repo = get_repo(s, f"{owner}/{name}", caller)
        commit = resolve(s, repo, revision)
        files = files_of(s, commit.id)
    out: list[dict[str, Any]] = []
    for p in wanted:
        check_path(p)
        if p in files:
            out.append(file_entry(files[p]))
        elif any(q.startswith(p.rstrip("/") + "/") for q in files):
            out.append({"type": "directory", "path": p, "oid": _folder_oid(p), "size": 0})
    return JSONResponse(out, headers={"X-Repo-Commit": commit.id})
