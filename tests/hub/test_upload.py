"""The upload path in detail: dedup in the LFS batch, metadata extracted at upload, Range and
HEAD answers, pickle refusal, interrupted uploads, the Xet hint, and error headers everywhere."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from sqlalchemy import func, select

from adapterkit.hub.db.models import Blob, Upload
from adapterkit.hub.gc import collect_expired, purge, verify
from adapterkit.io.hub import HubClient

from .conftest import Hub, lora_bert, point_hf_at, start_hub
from .raw import raw


def batch(hub: Hub, repo: str, oid: str, size: int) -> dict:
    reply = raw(hub, "POST", f"/{repo}.git/info/lfs/objects/batch", token=hub.alice, json_body={
        "operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
        "objects": [{"oid": oid, "size": size}]})
    assert reply.status == 200, reply.body
    return reply.json()["objects"][0]


def test_lfs_batch_dedups_known_blobs(hub: Hub) -> None:
    lora_bert(seed=21).kit.push("a", "alice/dedup", token=hub.alice, endpoint=hub.url)
    info = HubClient(hub.url, hub.alice).info("alice/dedup")
    known = next(s for s in info["siblings"] if s["rfilename"] == "adapter.safetensors")
    assert "actions" not in batch(hub, "alice/dedup", known["sha256"], known["size"])
    fresh = batch(hub, "alice/dedup", hashlib.sha256(b"new").hexdigest(), 3)
    assert set(fresh["actions"]) == {"upload", "verify"}


def test_metadata_is_extracted_at_upload(hub: Hub, tmp_path: Path) -> None:
    adapter = lora_bert(seed=22)
    adapter.kit.push("a", "alice/meta-ak", token=hub.alice, endpoint=hub.url)
    adapter.kit.push("a", "alice/meta-peft", token=hub.alice, endpoint=hub.url, format="peft")
    client = HubClient(hub.url, hub.alice)
    ak_meta = client.info("alice/meta-ak")["adapterkit"]
    assert ak_meta["adapter"]["method"] == "lora" and ak_meta["adapter"]["rank"] == 4
    assert ak_meta["adapter"]["base_model_type"] == "bert"
    assert len(ak_meta["adapter"]["base_fingerprint"]) == 16
    assert len(ak_meta["adapter"]["sites"]) == 4  # q and v of two layers
    assert ak_meta["parameters"] == 4 * (4 * 32 + 32 * 4)
    assert ak_meta["card"]["library_name"] == "adapterkit"
    peft_meta = client.info("alice/meta-peft")["adapterkit"]
    assert (peft_meta["adapter"]["format"], peft_meta["adapter"]["method"]) == ("peft", "lora")
    # two weight files whose headers differ (metadata) but whose tensors are the same
    tensors = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}
    for i, repo in enumerate(("alice/weights-1", "alice/weights-2")):
        folder = tmp_path / repo.replace("/", "-")
        folder.mkdir()
        safetensors.torch.save_file(tensors, str(folder / "adapter_model.safetensors"),
                                    metadata={"n": str(i)})
        (folder / "README.md").write_text("---\nbase_model: org/base\nlanguage: [en, de]\nlicense: mit\n"
                                          "pipeline_tag: text-classification\ntags: [demo]\n---\nweights\n")
        client.push_folder(folder, repo)
    one, two = (client.info(r) for r in ("alice/weights-1", "alice/weights-2"))
    w1, w2 = (i["adapterkit"]["weights"]["adapter_model.safetensors"] for i in (one, two))
    assert w1["sha256"] != w2["sha256"] and w1["payload_sha256"] == w2["payload_sha256"]
    assert w1["parameters"] == 64
    assert one["adapterkit"]["card"] == {"base_model": "org/base", "tasks": ["text-classification"],
                                         "language": ["en", "de"], "license": "mit", "tags": ["demo"],
                                         "library_name": None}
    found = HfApi(endpoint=hub.url, token=hub.alice).list_models(filter=f"weights:{w1['payload_sha256']}")
    assert sorted(m.id for m in found) == ["alice/weights-1", "alice/weights-2"]
    assert [m.id for m in HfApi(endpoint=hub.url).list_models(filter="language:de", author="alice")] == [
        "alice/weights-1", "alice/weights-2"]


def test_head_and_range_answers(hub: Hub) -> None:
    lora_bert(seed=23).kit.push("a", "alice/ranges", token=hub.alice, endpoint=hub.url)
    info = HubClient(hub.url, hub.alice).info("alice/ranges")
    sib = next(s for s in info["siblings"] if s["rfilename"] == "adapter.safetensors")
    path = "/alice/ranges/resolve/main/adapter.safetensors"
    head = raw(hub, "HEAD", path)
    assert head.headers["X-Repo-Commit"] == info["sha"]
    assert head.headers["ETag"].strip('"') == sib["sha256"]
    assert int(head.headers["Content-Length"]) == sib["size"]
    full = raw(hub, "GET", path).body
    assert hashlib.sha256(full).hexdigest() == sib["sha256"]
    part = raw(hub, "GET", path, headers={"Range": "bytes=10-"})
    assert part.status == 206 and part.body == full[10:]
    assert part.headers["Content-Range"] == f"bytes 10-{len(full) - 1}/{len(full)}"
    bad = raw(hub, "GET", path, headers={"Range": f"bytes={len(full) + 5}-"})
    assert (bad.status, bad.headers["X-Error-Code"]) == (416, "RangeNotSatisfiable")


def test_every_error_carries_a_code(hub: Hub) -> None:
    for method, path, status, code in (("GET", "/no/such/route/at/all/here", 404, "NotFound"),
                                       ("DELETE", "/api/whoami-v2", 405, "MethodNotAllowed"),
                                       ("GET", "/api/whoami-v2", 401, "Unauthorized"),
                                       ("GET", "/gpt2/resolve/main/config.json", 401, "RepoNotFound")):
        reply = raw(hub, method, path)
        assert (reply.status, reply.headers["X-Error-Code"]) == (status, code), path
        assert reply.headers["X-Error-Message"]


@pytest.fixture(scope="module")
def pickle_hub(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with ExitStack() as stack:
        yield start_hub(stack, tmp_path_factory.mktemp("pickle"), hub.backend, allow_pickle=True)


def test_pickle_files_are_refused_unless_allowed(hub: Hub, pickle_hub: Hub,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    lora_bert(seed=25).kit.push("a", "alice/pickles", token=hub.alice, endpoint=hub.url)
    for name in ("pytorch_model.bin", "adapter.pt", "x/state.pkl"):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=hub.url, token=hub.alice).upload_file(
                path_or_fileobj=b"\x80\x04pickle", path_in_repo=name, repo_id="alice/pickles")
        assert err.value.response.status_code == 422
        assert err.value.response.headers["X-Error-Code"] == "FileRefused"
        assert "--allow-pickle" in str(err.value)
    line = {"key": "file", "value": {"path": "model.bin", "content": "gARpY2tsZQ=="}}
    body = json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + json.dumps(line) + "\n"
    reply = raw(hub, "POST", "/api/models/alice/pickles/commit/main", token=hub.alice, body=body.encode())
    assert (reply.status, reply.headers["X-Error-Code"]) == (422, "FileRefused")
    point_hf_at(monkeypatch, pickle_hub.url)
    api = HfApi(endpoint=pickle_hub.url, token=pickle_hub.alice)
    api.create_repo("alice/legacy")
    api.upload_file(path_or_fileobj=b"\x80\x04pickle", path_in_repo="pytorch_model.bin",
                    repo_id="alice/legacy")
    assert "pytorch_model.bin" in api.list_repo_files("alice/legacy")


def _counts(hub: Hub) -> tuple[int, int]:
    with hub.server.hub.db.read() as s:
        return s.scalar(select(func.count()).select_from(Blob)) or 0, s.scalar(
            select(func.count()).select_from(Upload)) or 0


def test_a_client_that_disconnects_mid_upload_leaves_nothing(hub: Hub) -> None:
    lora_bert(seed=24).kit.push("a", "alice/interrupted", token=hub.alice, endpoint=hub.url)
    data = bytes(range(256)) * 4096  # 1 MiB
    oid = hashlib.sha256(data).hexdigest()
    href = batch(hub, "alice/interrupted", oid, len(data))["actions"]["upload"]["href"]
    before = _counts(hub)
    path = href[len(hub.url):]
    with socket.create_connection(("127.0.0.1", hub.server.port)) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        sock.sendall(data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(60)
        assert sock.recv(1024) == b""  # the server read the half body and the end: it closed
    # An empty staging folder proves nothing until the request is over: the upload may not have
    # begun yet (its signed URL is checked first, in a worker thread), so wait for its task.
    tasks = hub.server.server.server_state.tasks
    deadline = time.monotonic() + 30
    while (tasks or any(hub.server.hub.store.staging.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(hub.server.hub.store.staging.iterdir()) == []
    assert _counts(hub) == before
    assert not hub.server.hub.store.exists(oid)
    head = HubClient(hub.url, hub.alice).info("alice/interrupted")["sha"]
    assert HubClient(hub.url, hub.alice).info("alice/interrupted", head)["sha"] == head


def test_staged_but_uncommitted_blobs_are_collected(hub: Hub) -> None:
    lora_bert(seed=27).kit.push("a", "alice/staged", token=hub.alice, endpoint=hub.url)
    data = b"uploaded, never committed " * 1000
    oid = hashlib.sha256(data).hexdigest()
    href = batch(hub, "alice/staged", oid, len(data))["actions"]["upload"]["href"]
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(href, data=data, method="PUT")) as resp:
        assert resp.status == 200
    assert hub.server.hub.store.exists(oid)
    assert collect_expired(hub.server.hub) == 0  # within the grace period it is kept for its commit
    purge(hub.server.hub)
    assert hub.server.hub.store.exists(oid)
    assert collect_expired(hub.server.hub, grace_s=0) == 1  # what a server does every 10 minutes
    assert not hub.server.hub.store.exists(oid)
    assert verify(hub.server.hub).ok


def test_xet_clients_are_told_to_disable_xet(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    if int(huggingface_hub.__version__.split(".")[0]) < 1:
        pytest.skip(f"huggingface_hub {huggingface_hub.__version__} uploads over LFS unless the server "
                    "asks for Xet")
    pytest.importorskip("hf_xet", reason="the Xet path needs hf_xet")
    lora_bert(seed=26).kit.push("a", "alice/xet", token=hub.alice, endpoint=hub.url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(Exception, match="501"):  # hf_xet's own error names the status only
        HfApi(endpoint=hub.url, token=hub.alice).upload_file(
            path_or_fileobj=b"\x00" * 100, path_in_repo="x.safetensors", repo_id="alice/xet")
    files = {"files": [{"path": "x.safetensors", "sample": "", "size": 100}]}
    for agent, hinted in (("unknown/None; hf_hub/2.4.0; python/3.11", True),
                          ("unknown/None; hf_hub/0.36.2; python/3.11", False)):
        reply = raw(hub, "POST", "/api/models/alice/xet/preupload/main", token=hub.alice, json_body=files,
                    headers={"User-Agent": agent})
        assert ("HF_HUB_DISABLE_XET=1" in reply.headers.get("X-HF-Warning", "")) is hinted
    reply = raw(hub, "GET", "/api/models/alice/xet/xet-write-token/main", token=hub.alice)
    assert reply.status == 501 and "HF_HUB_DISABLE_XET=1" in reply.headers["X-Error-Message"]
