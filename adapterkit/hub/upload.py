"""The upload path: upload modes, signed LFS upload URLs, storing blobs, parsing NDJSON commits.

The LFS ``PUT`` carries no ``Authorization`` header (the Hugging Face client sends none there),
so its URL is signed: repo, oid, size, token and expiry, under the key in the ``settings`` table
that every hub process shares. The PUT is still authorised again (the token must be valid and
allowed to write), and its bytes are hashed while they arrive.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from .blobs import Staged
from .commits import Entry, Op, git_oid, lfs_pointer
from .db.models import Blob, Upload, now
from .errors import BadContent, HubError, Refused, TooLarge
from .metadata import payload_sha256
from .names import SHA256, check_folder, check_path
from .settings import PICKLE_SUFFIXES, Hub

BINARY_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".msgpack", ".h5", ".npy", ".npz", *PICKLE_SUFFIXES)
TICKET_TTL_S = 3600


def check_file(hub: Hub, path: Any, size: int | None) -> None:
    """Refuse a path, a pickle file (unless allowed) or a size the server will not store."""
    check_path(path)
    assert isinstance(path, str)
    if not hub.settings.allow_pickle and path.lower().endswith(PICKLE_SUFFIXES):
        raise Refused(f"{path}: pickle files ({', '.join(PICKLE_SUFFIXES)}) can run code when loaded "
                      "and this hub refuses them; upload safetensors, or start the server with "
                      "--allow-pickle")
    if size is not None and size > hub.settings.max_file_bytes:
        raise TooLarge(f"{path} has {size} bytes; this hub stores files of at most "
                       f"{hub.settings.max_file_bytes} bytes")


def upload_mode(hub: Hub, path: str, size: int, sample: bytes) -> str:
    if size >= hub.settings.regular_max_bytes or b"\x00" in sample or path.lower().endswith(BINARY_SUFFIXES):
        return "lfs"
    return "regular"


# -- signed upload URLs ----------------------------------------------------------------------
def _sign(hub: Hub, fields: str) -> str:
    return hmac.new(hub.secret, fields.encode(), hashlib.sha256).hexdigest()[:40]


def ticket(hub: Hub, repo_id: int, oid: str, size: int, token_id: int) -> str:
    fields = f"{repo_id}.{oid}.{size}.{token_id}.{int(time.time()) + TICKET_TTL_S}"
    return f"{fields}.{_sign(hub, fields)}"


@dataclass(frozen=True)
class Ticket:
    repo_id: int
    oid: str
    size: int
    token_id: int


def read_ticket(hub: Hub, text: str) -> Ticket:
    parts = text.split(".")
    bad = HubError("this upload URL is not valid: ask the LFS batch endpoint for a new one",
                   status=403, code="BadUploadUrl")
    if len(parts) != 6 or not all(p.isdigit() for p in parts[:1] + parts[2:5]):
        raise bad
    fields, sig = ".".join(parts[:5]), parts[5]
    if not hmac.compare_digest(_sign(hub, fields), sig) or not SHA256.fullmatch(parts[1]):
        raise bad
    if int(parts[4]) < time.time():
        raise HubError("this upload URL has expired: ask the LFS batch endpoint for a new one",
                       status=403, code="BadUploadUrl")
    return Ticket(int(parts[0]), parts[1], int(parts[2]), int(parts[3]))


# -- storing blobs ---------------------------------------------------------------------------
def register(session: Session, staged: Staged, payload: str | None, repo_id: int) -> None:
    """The blob row (once, even when several processes store the same bytes at the same time)
    and an upload row that protects the blob until a commit of ``repo_id`` uses it."""
    values = {"sha256": staged.sha256, "size": staged.size, "payload_sha256": payload, "created_at": now()}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(Blob).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(Blob).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    session.add(Upload(repo_id=repo_id, blob=staged.sha256, created_at=now()))


def protect(session: Session, repo_id: int, sha256: str) -> None:
    """Mark a known blob as about to be committed to ``repo_id`` (so purge keeps it)."""
    session.add(Upload(repo_id=repo_id, blob=sha256, created_at=now()))


# -- NDJSON commits --------------------------------------------------------------------------
@dataclass
class ParsedCommit:
    summary: str
    description: str
    parent: str | None
    ops: list[Op]
    regular: list[tuple[Staged, str | None]]  # staged small files and their payload hashes
    lfs: list[tuple[str, int | None]]  # (oid, size) that must be stored already


def _line(raw: bytes, n: int) -> dict[str, Any]:
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HubError(f"commit line {n} is not valid JSON: {raw[:80]!r}", code="BadNdjson") from None
    if not isinstance(item, dict) or not isinstance(item.get("value"), dict) or "key" not in item:
        raise HubError(f"commit line {n} must be an object with 'key' and an object 'value'",
                       code="BadNdjson")
    return item


def _header(value: dict[str, Any]) -> tuple[str, str, str | None]:
    summary, desc, parent = value.get("summary"), value.get("description", ""), value.get("parentCommit")
    if not isinstance(summary, str) or not summary.strip():
        raise HubError("the commit header needs a non-empty 'summary'", code="BadNdjson")
    if not isinstance(desc, str) or (parent is not None and not (isinstance(parent, str)
                                                                  and len(parent) == 40)):
        raise HubError("the commit header's 'description' must be a string and 'parentCommit' "
                       "a 40-hex commit id", code="BadNdjson")
    return summary[:4096], desc[:65536], parent


def _regular(hub: Hub, value: dict[str, Any], n: int) -> tuple[Op, Staged, str | None]:
    path = value.get("path")
    check_file(hub, path, None)
    if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
        raise HubError(f"commit line {n}: 'file' needs base64 'content'", code="BadNdjson")
    try:
        data = base64.b64decode(value["content"], validate=True)
    except (binascii.Error, ValueError):
        raise HubError(f"commit line {n}: the content of {path} is not valid base64",
                       code="BadNdjson") from None
    check_file(hub, path, len(data))
    staged = hub.store.stage_bytes(data)
    entry = Entry(staged.sha256, staged.size, git_oid(data), lfs=False)
    return Op("add", str(path), entry), staged, payload_sha256(data)


def _lfs(hub: Hub, value: dict[str, Any], n: int) -> tuple[Op, str, int | None]:
    path, oid, size = value.get("path"), value.get("oid"), value.get("size")
    check_file(hub, path, size if isinstance(size, int) else None)
    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not SHA256.fullmatch(oid):
        raise HubError(f"commit line {n}: 'lfsFile' needs algo 'sha256' and a 64-hex 'oid'",
                       code="BadNdjson")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise HubError(f"commit line {n}: 'size' must be a non-negative integer", code="BadNdjson")
    return Op("add", str(path), Entry(oid, size or 0, "", lfs=True)), oid, size


def parse_commit(hub: Hub, body: bytes) -> ParsedCommit:
    """Check every line of an NDJSON commit before anything is stored; small files are staged
    (and deleted again if a later line is bad)."""
    lines = [raw for raw in body.split(b"\n") if raw.strip()]
    if not lines:
        raise HubError("the commit body is empty: send NDJSON, a 'header' line first", code="BadNdjson")
    first = _line(lines[0], 1)
    if first["key"] != "header":
        raise HubError("the first commit line must be the 'header'", code="BadNdjson")
    parsed = ParsedCommit(*_header(first["value"]), ops=[], regular=[], lfs=[])
    try:
        for n, raw in enumerate(lines[1:], start=2):
            item = _line(raw, n)
            key, value = item["key"], item["value"]
            if key == "file":
                op, staged, payload = _regular(hub, value, n)
                parsed.regular.append((staged, payload))
            elif key == "lfsFile":
                op, oid, size = _lfs(hub, value, n)
                parsed.lfs.append((oid, size))
            elif key in ("deletedFile", "deletedFolder"):
                path = value.get("path")
                op = Op("delete", check_path(path)) if key == "deletedFile" else \
                    Op("delete_folder", check_folder(path))
            else:
                raise HubError(f"commit line {n}: unknown key {key!r}; use header, file, lfsFile, "
                               "deletedFile or deletedFolder", code="BadNdjson")
            parsed.ops.append(op)
    except HubError:
        discard(parsed)
        raise
    return parsed


def discard(parsed: ParsedCommit) -> None:
    for staged, _ in parsed.regular:
        staged.path.unlink(missing_ok=True)


def resolve_lfs(session: Session, parsed: ParsedCommit) -> None:
    """Fill in the size and git oid of LFS entries from their stored blobs; a blob that is not
    stored (or has another size) refuses the commit."""
    sizes: dict[str, int] = {}
    for oid, size in parsed.lfs:
        blob = session.get(Blob, oid)
        if blob is None:
            raise BadContent(f"lfsFile {oid} was never uploaded (or its upload was collected): upload "
                             "it through the LFS batch endpoint first")
        if size is not None and blob.size != size:
            raise BadContent(f"lfsFile {oid} is stored with {blob.size} bytes, the commit says {size}")
        sizes[oid] = blob.size
    for i, op in enumerate(parsed.ops):
        if op.entry is not None and op.entry.lfs:
            oid = op.entry.blob
            size = sizes[oid]
            parsed.ops[i] = Op("add", op.path, Entry(oid, size, git_oid(lfs_pointer(oid, size)), True))
