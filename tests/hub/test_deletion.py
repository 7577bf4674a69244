"""Deletion that can be verified: files, branches, tags and repos; ``purge`` removes every blob
no remaining commit references; ``verify`` finds missing, corrupt and orphaned blobs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from adapterkit.cli.main import main
from adapterkit.hub.gc import purge, verify
from adapterkit.io.hub import HubClient

from .conftest import Hub, lora_bert
from .raw import raw


def scan(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and needle in path.read_bytes():
                hits.append(path)
    return hits


def weights_of(hub: Hub, repo: str) -> bytes:
    """A distinctive slice of the repo's tensor bytes (its last 256)."""
    path = hf_hub_download(repo, "adapter.safetensors", endpoint=hub.url, token=hub.alice,
                           cache_dir=str(hub.root.parent / f"dl-{repo.replace('/', '-')}"))
    return Path(path).read_bytes()[-256:]


def test_purged_repo_leaves_no_url_commit_or_byte(hub: Hub, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    adapter = lora_bert(seed=11)
    first = adapter.kit.push("a", "alice/doomed", token=hub.alice, endpoint=hub.url)
    api = HfApi(endpoint=hub.url, token=hub.alice)
    api.create_tag("alice/doomed", tag="v1")
    api.create_branch("alice/doomed", branch="dev")
    needle = weights_of(hub, "alice/doomed")
    commits = [c.commit_id for c in api.list_repo_commits("alice/doomed")]
    assert scan(hub.root / "blobs", needle)
    api.delete_repo("alice/doomed")
    where = ["--root", str(hub.root)] + (["--db", hub.db_url] if hub.db_url else [])
    assert main(["hub", "purge", *where, "--grace", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blobs"] >= 3 and report["bytes"] > 0
    assert scan(hub.root / "blobs", needle) == []
    assert scan(hub.root / "staging", needle) == []
    for rev in ["main", "v1", "dev", first, *commits]:
        for path in ("adapter.safetensors", "adapter_config.json", "README.md"):
            with pytest.raises(RepositoryNotFoundError):
                hf_hub_download("alice/doomed", path, revision=rev, endpoint=hub.url, token=hub.alice,
                                cache_dir=tempfile.mkdtemp(dir=tmp_path))
        reply = raw(hub, "GET", f"/api/models/alice/doomed/revision/{rev}", token=hub.alice)
        assert (reply.status, reply.headers["X-Error-Code"]) == (404, "RepoNotFound")
    assert [m.id for m in api.list_models(search="doomed")] == []
    assert verify(hub.server.hub).ok


def test_deleted_file_branch_and_tag(hub: Hub, tmp_path: Path) -> None:
    adapter = lora_bert(seed=12)
    first = adapter.kit.push("a", "alice/edits", token=hub.alice, endpoint=hub.url)
    api = HfApi(endpoint=hub.url, token=hub.alice)
    api.create_branch("alice/edits", branch="side")
    api.upload_file(path_or_fileobj=b"only on side\n" * 50, path_in_repo="notes/side.txt",
                    repo_id="alice/edits", revision="side")
    api.create_tag("alice/edits", tag="old", revision="side")
    api.delete_file("README.md", "alice/edits")  # a new commit on main
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/edits", "README.md", endpoint=hub.url, token=hub.alice,
                        cache_dir=str(tmp_path))
    # the old commit still has it, as on the Hub, until its history is dropped
    assert Path(hf_hub_download("alice/edits", "README.md", revision=first, endpoint=hub.url,
                                token=hub.alice, cache_dir=str(tmp_path))).is_file()
    side = b"only on side\n" * 50
    assert scan(hub.root / "blobs", side)
    api.delete_branch("alice/edits", branch="side")
    purge(hub.server.hub, grace_s=0)
    assert scan(hub.root / "blobs", side)  # the tag still reaches the side commit
    api.delete_tag("alice/edits", tag="old")
    purge(hub.server.hub, grace_s=0)
    assert scan(hub.root / "blobs", side) == []
    for rev in ("side", "old"):
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download("alice/edits", "notes/side.txt", revision=rev, endpoint=hub.url,
                            token=hub.alice, cache_dir=tempfile.mkdtemp(dir=tmp_path))
    assert verify(hub.server.hub).ok


def test_shared_content_survives_the_other_repos_purge(hub: Hub) -> None:
    adapter = lora_bert(seed=13)
    adapter.kit.push("a", "alice/twin-a", token=hub.alice, endpoint=hub.url)
    adapter.kit.push("a", "alice/twin-b", token=hub.alice, endpoint=hub.url)
    needle = weights_of(hub, "alice/twin-a")
    HfApi(endpoint=hub.url, token=hub.alice).delete_repo("alice/twin-a")
    purge(hub.server.hub, grace_s=0)
    assert len(scan(hub.root / "blobs", needle)) == 1  # twin-b holds the same bytes, stored once
    assert Path(hf_hub_download("alice/twin-b", "adapter.safetensors", endpoint=hub.url, token=hub.alice,
                                cache_dir=str(hub.root.parent / "twin"))).read_bytes()[-256:] == needle


def test_verify_reports_missing_corrupt_and_orphaned(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = lora_bert(seed=14)
    adapter.kit.push("a", "alice/verify-me", token=hub.alice, endpoint=hub.url)
    store = hub.server.hub.store
    info = HubClient(hub.url, hub.alice).info("alice/verify-me")
    sha = {s["rfilename"]: s["sha256"] for s in info["siblings"]}
    corrupt, missing = store.path(sha["adapter.safetensors"]), store.path(sha["README.md"])
    good_corrupt, good_missing = corrupt.read_bytes(), missing.read_bytes()
    orphan = store.blobs / "ab" / "cd" / ("abcd" + "0" * 60)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"nobody references this")
    try:
        corrupt.write_bytes(good_corrupt[:-1] + bytes([good_corrupt[-1] ^ 1]))
        missing.unlink()
        report = verify(hub.server.hub)
        assert not report.ok
        assert report.corrupt == [sha["adapter.safetensors"]]
        assert report.missing == [sha["README.md"]]
        assert report.orphaned == [str(orphan.relative_to(hub.root))]
        where = ["--root", str(hub.root)] + (["--db", hub.db_url] if hub.db_url else [])
        assert main(["hub", "verify", *where, "--json"]) == 1
        assert '"ok": false' in capsys.readouterr().out
    finally:
        corrupt.write_bytes(good_corrupt)
        missing.write_bytes(good_missing)
        orphan.unlink(missing_ok=True)
    assert verify(hub.server.hub).ok
    assert main(["hub", "verify", *where]) == 0


def test_expunge_removes_a_file_from_all_history(hub: Hub, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    adapter = lora_bert(seed=15)
    adapter.kit.push("a", "alice/leak", token=hub.alice, endpoint=hub.url)
    api = HfApi(endpoint=hub.url, token=hub.alice)
    secret = b"api-key=do-not-share-" + os.urandom(16).hex().encode()
    leaked = api.upload_file(path_or_fileobj=secret, path_in_repo="notes/secret.txt",
                             repo_id="alice/leak").oid
    cleaned = api.delete_file("notes/secret.txt", "alice/leak").oid
    assert scan(hub.root / "blobs", secret)  # the deleting commit leaves the old one holding it
    where = ["--root", str(hub.root)] + (["--db", hub.db_url] if hub.db_url else [])
    assert main(["hub", "expunge", *where, "alice/leak", "notes/secret.txt", "--purge"]) == 0
    assert "removed notes/secret.txt from 1 commit(s)" in capsys.readouterr().out
    assert scan(hub.root / "blobs", secret) == []
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/leak", "notes/secret.txt", revision=leaked, endpoint=hub.url, token=hub.alice,
                        cache_dir=tempfile.mkdtemp(dir=tmp_path))
    info = HubClient(hub.url, hub.alice).info("alice/leak", leaked)
    assert info["adapterkit"]["expunged"] == ["notes/secret.txt"]
    assert "notes/secret.txt" not in {s["rfilename"] for s in info["siblings"]}
    assert [c.commit_id for c in api.list_repo_commits("alice/leak")][:2] == [cleaned, leaked]
    assert verify(hub.server.hub).ok
    assert main(["hub", "expunge", *where, "alice/leak", "notes/secret.txt"]) == 2
    assert "no commit of alice/leak holds notes/secret.txt" in capsys.readouterr().err
