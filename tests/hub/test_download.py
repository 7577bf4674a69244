"""The download path: ranges read by the real client (``HfFileSystem``), single ranges by any
revision, bodies sent with ``http.response.zerocopysend`` or without it, and the queries one
resolve costs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from huggingface_hub import HfApi, HfFileSystem
from sqlalchemy import event

from adapterkit.hub import zerocopy
from adapterkit.io.hub import HubClient

from .conftest import Hub, lora_bert
from .raw import raw

FILE = "adapter.safetensors"


@pytest.fixture(scope="module")
def pushed(hub: Hub) -> dict[str, Any]:
    """A pushed adapter: its bytes, its commit id, and a tag on that commit."""
    lora_bert(seed=31).kit.push("a", "alice/download", token=hub.alice, endpoint=hub.url)
    info = HubClient(hub.url, hub.alice).info("alice/download")
    HfApi(endpoint=hub.url, token=hub.alice).create_tag("alice/download", tag="v1")
    body = raw(hub, "GET", f"/alice/download/resolve/main/{FILE}").body
    sib = next(s for s in info["siblings"] if s["rfilename"] == FILE)
    assert hashlib.sha256(body).hexdigest() == sib["sha256"]
    return {"body": body, "commit": info["sha"]}


def test_hf_file_system_reads_ranges(hub: Hub, pushed: dict[str, Any]) -> None:
    body = pushed["body"]
    fs = HfFileSystem(endpoint=hub.url, token=hub.alice)
    with fs.open(f"alice/download/{FILE}", "rb", block_size=100) as f:  # bytes=START-END requests
        f.seek(37)
        assert f.read(150) == body[37:187]
        f.seek(len(body) - 10)
        assert f.read() == body[-10:]


@pytest.mark.parametrize("revision", ["main", "v1", "commit"])
def test_single_ranges_by_every_kind_of_revision(hub: Hub, pushed: dict[str, Any], revision: str) -> None:
    body, size = pushed["body"], len(pushed["body"])
    rev = pushed["commit"] if revision == "commit" else revision
    path = f"/alice/download/resolve/{rev}/{FILE}"
    last = f"bytes={size - 1}-{size + 50}"
    for header, start, end in ((None, 0, size), ("bytes=0-", 0, size), ("bytes=3-9", 3, 10),
                               ("bytes=-7", size - 7, size), (last, size - 1, size)):
        reply = raw(hub, "GET", path, headers={"Range": header} if header else None)
        assert (reply.status, reply.body) == (206 if header else 200, body[start:end]), header
        assert reply.headers["X-Repo-Commit"] == pushed["commit"]
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        assert reply.headers["ETag"] == reply.headers["X-Linked-Etag"] == etag
        assert int(reply.headers["Content-Length"]) == end - start
        if header:
            assert reply.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
    other = raw(hub, "GET", path, headers={"Range": "bytes=3-9", "If-Range": '"not-the-etag"'})
    assert (other.status, other.body) == (200, body)  # a stale If-Range gets the whole file


@contextmanager
def _without_zerocopy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Requests stop offering the extension (the server's answers fall back to chunked reads)."""
    with monkeypatch.context() as m:
        m.setattr(zerocopy.ZeroCopyH11Protocol, "handle_events", zerocopy.H11Protocol.handle_events)
        yield


def test_bodies_with_and_without_zerocopysend_are_the_same(hub: Hub, pushed: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    real_send = zerocopy.ZeroCopyCycle.send

    async def counting(self: zerocopy.ZeroCopyCycle, message: Any) -> None:
        sent.append(message["type"])
        await real_send(self, message)

    monkeypatch.setattr(zerocopy.ZeroCopyCycle, "send", counting)
    path = f"/alice/download/resolve/main/{FILE}"
    answers = []
    for offered in (True, False):
        sent.clear()
        if offered:
            answers.append([raw(hub, "GET", path, headers=h).body for h in (None, {"Range": "bytes=4-"})])
            assert sent.count(zerocopy.ZEROCOPY) == 2
        else:
            with _without_zerocopy(monkeypatch):
                answers.append([raw(hub, "GET", path, headers=h).body for h in (None, {"Range": "bytes=4-"})])
            assert sent == []
    assert answers[0] == answers[1] == [pushed["body"], pushed["body"][4:]]


def test_a_resolve_costs_one_query_and_the_token_check(hub: Hub, pushed: dict[str, Any]) -> None:
    statements: list[str] = []
    engine = hub.server.hub.db.read_engine

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not BEGIN, nor the audit log's writes
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        for rev in ("main", "v1", pushed["commit"]):
            for method, token in (("HEAD", None), ("GET", hub.alice), ("HEAD", hub.alice)):
                statements.clear()
                reply = raw(hub, method, f"/alice/download/resolve/{rev}/{FILE}", token=token)
                assert reply.status == 200
                # the token's cached caller costs one read of the auth epoch; the file, one more
                assert len(statements) == (2 if token else 1), (rev, method, statements)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
