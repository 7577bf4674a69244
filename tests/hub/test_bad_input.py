"""Bad input: each case gets its status, ``X-Error-Code`` and message, is raised as the stock
client's own exception, changes no state, and leaves the server serving."""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from sqlalchemy import func, select

from adapterkit.hub.admin import token_revoke
from adapterkit.hub.db.models import Blob, Commit, Ref, Upload

from .conftest import Hub, lora_bert, start_hub
from .hf_raw import send

LIMIT_FILE, LIMIT_REQUEST = 1 << 20, 256 << 10


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub with small limits (1 MiB per file, 256 KiB per other body) and one adapter repo."""
    with ExitStack() as stack:
        h = start_hub(stack, tmp_path_factory.mktemp("bad"), request.param, max_file_bytes=LIMIT_FILE,
                      max_request_bytes=LIMIT_REQUEST)
        lora_bert().kit.push("a", "alice/target", token=h.alice, endpoint=h.url)
        yield h


def state(hub: Hub) -> tuple[Any, ...]:
    with hub.server.hub.db.read() as s:
        refs = sorted(s.execute(select(Ref.repo_id, Ref.kind, Ref.name, Ref.commit_id)).tuples().all())
        counts = [s.scalar(select(func.count()).select_from(t)) for t in (Commit, Blob, Upload)]
    files = sorted(p.name for p in hub.server.hub.store.names())
    staging = sorted(p.name for p in hub.server.hub.store.staging.iterdir())
    return refs, counts, files, staging


@pytest.fixture
def unchanged(hub: Hub) -> Iterator[None]:
    before = state(hub)
    yield
    assert state(hub) == before
    assert send("GET", hub.url + "/api/health").json()["status"] == "ok"


def api(hub: Hub, token: str | None = None) -> HfApi:
    return HfApi(endpoint=hub.url, token=token or hub.alice)


def expect(exc: type[BaseException], call: Callable[[], Any], status: int, code: str, words: str) -> None:
    with pytest.raises(exc) as err:
        call()
    response = err.value.response  # type: ignore[attr-defined]
    assert response.status_code == status
    assert response.headers["X-Error-Code"] == code
    assert words in str(err.value)


def dl(hub: Hub, repo: str, path: str, **kw: Any) -> Callable[[], Any]:
    return lambda: hf_hub_download(repo, path, endpoint=hub.url, token=hub.alice,
                                   cache_dir=tempfile.mkdtemp(dir=hub.root.parent), **kw)


@pytest.mark.usefixtures("unchanged")
def test_missing_repo_revision_file(hub: Hub) -> None:
    expect(RepositoryNotFoundError, dl(hub, "alice/none", "x"), 404, "RepoNotFound",
           "alice/none not found")
    expect(RevisionNotFoundError, dl(hub, "alice/target", "README.md", revision="nope"), 404,
           "RevisionNotFound", "nope")
    expect(EntryNotFoundError, dl(hub, "alice/target", "nope.txt"), 404, "EntryNotFound",
           "nope.txt does not exist")
    expect(RepositoryNotFoundError, lambda: api(hub).model_info("alice/none"), 404, "RepoNotFound",
           "not found")


@pytest.mark.usefixtures("unchanged")
def test_wrong_revoked_and_read_tokens(hub: Hub) -> None:
    expect(HfHubHTTPError, lambda: api(hub, "akh_wrong").model_info("alice/target"), 401, "InvalidToken",
           "not known to this hub")
    revoked = hub.token("alice", "write")
    token_revoke(hub.server.hub, revoked)
    state_before = state(hub)  # revoking wrote the token row and an audit row: compare from here
    expect(HfHubHTTPError, lambda: api(hub, revoked).upload_file(
        path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/target"), 401, "TokenRevoked", "revoked")
    expect(HfHubHTTPError, lambda: api(hub, hub.alice_read).upload_file(
        path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/target"), 403, "Forbidden", "read scope")
    assert state(hub) == state_before


def test_stale_parent_commit(hub: Hub) -> None:
    a = api(hub)
    old = a.model_info("alice/target").sha
    a.upload_file(path_or_fileobj=b"first\n", path_in_repo="first.txt", repo_id="alice/target")
    before = state(hub)
    expect(HfHubHTTPError, lambda: a.create_commit(
        "alice/target", [CommitOperationAdd("late.txt", b"late\n")], commit_message="late",
        parent_commit=old), 412, "ParentCommitMismatch", "is not the head of main")
    assert state(hub)[0] == before[0]  # no ref moved
    assert "late.txt" not in a.list_repo_files("alice/target")


def test_concurrent_pushes_one_wins_the_other_is_told(hub: Hub) -> None:
    a = api(hub)
    head = a.model_info("alice/target").sha
    results: dict[str, Any] = {}

    def push(name: str) -> None:
        try:
            op = CommitOperationAdd(f"{name}.txt", name.encode())
            results[name] = a.create_commit("alice/target", [op], commit_message=name,
                                            parent_commit=head).oid
        except HfHubHTTPError as exc:
            results[name] = exc.response.status_code

    threads = [threading.Thread(target=push, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in results.items() if isinstance(r, str)]
    refused = [r for r in results.values() if not isinstance(r, str)]
    assert len(winners) == 1 and refused == [412], results
    history = [c.commit_id for c in a.list_repo_commits("alice/target")]
    assert history[:2] == [results[winners[0]], head]
    assert f"{winners[0]}.txt" in a.list_repo_files("alice/target")


def _lfs_href(hub: Hub, oid: str, size: int) -> str:
    reply = send("POST", hub.url + "/alice/target.git/info/lfs/objects/batch", token=hub.alice,
                 body=json.dumps({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                                  "objects": [{"oid": oid, "size": size}]}).encode(),
                 headers={"Content-Type": "application/json"})
    return str(reply.json()["objects"][0]["actions"]["upload"]["href"])


@pytest.mark.usefixtures("unchanged")
def test_upload_bytes_that_do_not_match_their_sha256(hub: Hub) -> None:
    good = b"the announced bytes" * 100
    href = _lfs_href(hub, hashlib.sha256(good).hexdigest(), len(good))
    bad = b"X" + good[1:]
    expect(BadRequestError, lambda: send("PUT", href, body=bad), 400, "ContentMismatch",
           "the announced oid is")
    expect(BadRequestError, lambda: send("PUT", href, body=good[:-1]), 400, "ContentMismatch",
           f"{len(good) - 1} bytes arrived, {len(good)} were announced")
    commit = ndjson({"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256",
                                                 "oid": hashlib.sha256(good).hexdigest(), "size": len(good)}})
    url = hub.url + "/api/models/alice/target/commit/main"
    expect(BadRequestError, lambda: send("POST", url, body=commit,
                                         token=hub.alice), 400, "ContentMismatch", "was never uploaded")


def ndjson(*lines: dict[str, Any], header: dict[str, Any] | None = None) -> bytes:
    head = {"key": "header", "value": header or {"summary": "s", "description": ""}}
    return b"".join(json.dumps(x).encode() + b"\n" for x in (head, *lines))


@pytest.mark.usefixtures("unchanged")
def test_names_with_dot_dot(hub: Hub) -> None:
    expect(BadRequestError, lambda: api(hub).create_branch("alice/target", branch="x..y"), 400, "InvalidName",
           "bad branch name")
    for path in ("../etc/passwd", "a/../b", "/abs", "a\\b", "ok/\x01ctl", ".git/config"):
        body = json.dumps({"files": [{"path": path, "sample": "", "size": 1}]}).encode()
        expect(BadRequestError, lambda b=body: send(  # type: ignore[misc]
            "POST", hub.url + "/api/models/alice/target/preupload/main", body=b, token=hub.alice,
            headers={"Content-Type": "application/json"}), 400, "InvalidName", "bad file path")
        line = {"key": "file", "value": {"path": path, "content": base64.b64encode(b"x").decode()}}
        commit_body = ndjson(line)
        expect(BadRequestError, lambda b=commit_body: send(  # type: ignore[misc]
            "POST", hub.url + "/api/models/alice/target/commit/main", body=b, token=hub.alice),
            400, "InvalidName", "bad file path")
    expect(BadRequestError, lambda: send("GET", hub.url + "/alice/target/resolve/main/a%2F..%2Fb"), 400,
           "InvalidName", "bad file path")


@pytest.mark.usefixtures("unchanged")
def test_oversized_bodies(hub: Hub) -> None:
    big = b"\x00" * (LIMIT_FILE + 1)
    expect(HfHubHTTPError, lambda: api(hub).upload_file(
        path_or_fileobj=big, path_in_repo="big.safetensors", repo_id="alice/target"), 413, "PayloadTooLarge",
        f"at most {LIMIT_FILE} bytes")
    expect(HfHubHTTPError, lambda: send("POST", hub.url + "/api/repos/create", token=hub.alice,
                                        body=b"{" + b" " * LIMIT_REQUEST + b"}",
                                        headers={"Content-Type": "application/json"}),
           413, "PayloadTooLarge", f"at most {LIMIT_REQUEST}")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit stops the stream
        for _ in range(LIMIT_REQUEST // 4096 + 2):
            yield b" " * 4096
    expect(HfHubHTTPError, lambda: _chunked(hub, chunks()), 413, "PayloadTooLarge", "limit")
    href = _lfs_href(hub, "ab" * 32, 10)
    expect(HfHubHTTPError, lambda: send("PUT", href, body=b"y" * 11), 413, "PayloadTooLarge", "limit")


def _chunked(hub: Hub, body: Iterator[bytes]) -> Any:
    """POST a body sent in chunks, without a Content-Length, through the client's session."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    session, url = get_session(), hub.url + "/api/validate-yaml"
    headers = {"Content-Type": "application/json"}
    if hasattr(session, "build_request"):  # httpx
        response = session.request("POST", url, content=body, headers=headers)
    else:  # requests
        response = session.request("POST", url, data=body, headers=headers)
    hf_raise_for_status(response)
    return response


@pytest.mark.usefixtures("unchanged")
def test_malformed_json_and_ndjson(hub: Hub) -> None:
    json_headers = {"Content-Type": "application/json"}
    for body, words in ((b"{not json", "not valid JSON"), (b"[1, 2]", "bad request"),
                        (b'{"name": 5}', "name")):
        expect(BadRequestError, lambda b=body: send("POST", hub.url + "/api/repos/create",  # type: ignore[misc]
                                                    token=hub.alice, body=b, headers=json_headers),
               400, "BadRequest", words)
    commit = hub.url + "/api/models/alice/target/commit/main"
    for body, words in ((b"not json\n", "line 1 is not valid JSON"), (b"", "body is empty"),
                        (ndjson({"key": "file", "value": {"path": "x"}}), "needs base64 'content'"),
                        (ndjson({"key": "teleport", "value": {}}), "unknown key 'teleport'"),
                        (json.dumps({"key": "file", "value": {}}).encode(),
                         "first commit line must be the 'header'"),
                        (ndjson(header={"summary": ""}), "non-empty 'summary'"),
                        (ndjson(header={"summary": "s", "parentCommit": "abc"}), "40-hex"),
                        (ndjson({"key": "file", "value": {"path": "x", "content": "@@@"}}),
                         "not valid base64"),
                        (ndjson({"key": "deletedFile", "value": {"path": "nope.txt"}}), "no such file")):
        code = "EntryNotFound" if b"deletedFile" in body else "BadNdjson"
        exc = EntryNotFoundError if code == "EntryNotFound" else BadRequestError
        status = 404 if code == "EntryNotFound" else 400
        expect(exc, lambda b=body: send("POST", commit, token=hub.alice, body=b), status, code, words)
