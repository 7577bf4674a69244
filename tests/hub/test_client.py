"""adapterkit's own client: ``kit.push``, ``kit.load("hub://...")``, the verified,
content-addressed cache, and ``adapterkit push | pull | login``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import adapterkit as ak
from adapterkit.cli.main import main
from adapterkit.errors import LoadError
from adapterkit.io.hub import HubClient, IntegrityError, RepoNotFoundError, RevisionNotFoundError
from adapterkit.io.hub.client import parse_source

from ..models import build, inputs_for, run
from .conftest import Hub, lora_bert, output_of


def test_push_then_load_every_revision_form(hub: Hub, tmp_path: Path) -> None:
    local = lora_bert(seed=1)
    commit = local.kit.push("a", "alice/revs", token=hub.alice, endpoint=hub.url)
    HubClient(hub.url, hub.alice).http.call("POST", "/api/models/alice/revs/tag/main",
                                            json_body={"tag": "v1"})
    for source in ("hub://alice/revs", "hub://alice/revs@main", "hub://alice/revs@v1",
                   f"hub://alice/revs@{commit}"):
        got = output_of(source, hub, tmp_path / "cache", token=hub.alice)
        torch.testing.assert_close(got, local.expected, atol=1e-6, rtol=0)


def test_endpoint_defaults_to_the_environment(hub: Hub, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    local = lora_bert(seed=2)
    monkeypatch.setenv("ADAPTERKIT_HUB", hub.url)
    monkeypatch.setenv("ADAPTERKIT_HUB_TOKEN", hub.alice)
    local.kit.push("a", "alice/by-env")
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.activate(kit.load("hub://alice/by-env", cache_dir=tmp_path / "cache"))
    torch.testing.assert_close(run(model, "bert", inputs_for("bert")), local.expected, atol=1e-6, rtol=0)


def test_cache_is_shared_between_revisions(hub: Hub, tmp_path: Path) -> None:
    local = lora_bert(seed=3)
    first = local.kit.push("a", "alice/shared", token=hub.alice, endpoint=hub.url)
    client = HubClient(hub.url, hub.alice, tmp_path / "cache")
    one = client.pull("alice/shared", first)
    # a second commit that only changes the README: the weights blob is the same
    (one.parent / "extra").mkdir(exist_ok=True)
    folder = tmp_path / "v2"
    folder.mkdir()
    for f in one.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "README.md").write_text("---\nlicense: mit\n---\nv2\n")
    second = client.push_folder(folder, "alice/shared", message="v2")
    two = client.pull("alice/shared", second)
    assert one != two
    a, b = one / "adapter.safetensors", two / "adapter.safetensors"
    assert os.stat(a).st_ino == os.stat(b).st_ino  # one blob on disk for both revisions
    protos = one / "arrow_prototypes.safetensors", two / "arrow_prototypes.safetensors"
    assert os.stat(protos[0]).st_ino == os.stat(protos[1]).st_ino  # same weights, same prototypes
    # 2 READMEs + config + weights + the hub's Arrow prototypes of those weights
    assert len(list((tmp_path / "cache" / "blobs").iterdir())) == 5


def test_corrupt_download_is_refused_and_not_cached(hub: Hub, tmp_path: Path) -> None:
    local = lora_bert(seed=4)
    local.kit.push("a", "alice/corrupt", token=hub.alice, endpoint=hub.url)
    client = HubClient(hub.url, hub.alice, tmp_path / "cache")
    info = client.info("alice/corrupt")
    sha = next(s["sha256"] for s in info["siblings"] if s["rfilename"] == "adapter.safetensors")
    blob = hub.server.hub.store.path(sha)
    good = blob.read_bytes()
    try:
        blob.write_bytes(good[:-4] + b"\x00\x00\x00\x01")  # same size, other bytes
        with pytest.raises(IntegrityError, match="differ from what the hub announced"):
            client.pull("alice/corrupt")
        assert not (tmp_path / "cache" / "blobs" / sha).exists()
    finally:
        blob.write_bytes(good)
    assert client.pull("alice/corrupt").is_dir()


def test_fingerprint_mismatch_names_what_differs(hub: Hub, tmp_path: Path) -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("ia3", ak.IA3(targets=("attn.k", "attn.v", "ffn.out"), feedforward=()))
    kit.push("ia3", "alice/ia3", token=hub.alice, endpoint=hub.url)
    import transformers as T

    from ..models import _ENC

    # same hidden size (the IA3 vectors fit) but another intermediate size: the base differs
    other = T.BertForSequenceClassification(T.BertConfig(**{**_ENC, "intermediate_size": 48}))
    differs = r"(?s)base fingerprint .* differs.*output\.dense.*\(32, 64\).*\(32, 48\)"
    with pytest.raises(LoadError, match=differs):
        ak.AdapterKit(other).load("hub://alice/ia3", token=hub.alice, endpoint=hub.url, cache_dir=tmp_path)
    assert ak.AdapterKit(other).names == []


def test_missing_repo_and_revision(hub: Hub, tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    with pytest.raises(RepoNotFoundError):
        kit.load("hub://alice/none", token=hub.alice, endpoint=hub.url, cache_dir=tmp_path)
    lora_bert().kit.push("a", "alice/present", token=hub.alice, endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        kit.load("hub://alice/present@nope", token=hub.alice, endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(LoadError, match="hub://owner/name"):
        kit.load("hub://just-a-name", endpoint=hub.url)
    assert kit.names == []


@pytest.mark.parametrize("rest,repo,rev", [("a/b", "a/b", "main"), ("a/b@v1", "a/b", "v1"),
                                           ("a.x/b-c_d@" + "f" * 40, "a.x/b-c_d", "f" * 40)])
def test_parse_source(rest: str, repo: str, rev: str) -> None:
    assert parse_source(rest) == (repo, rev)


def test_cli_login_push_pull(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ADAPTERKIT_HUB_CONFIG", str(tmp_path / "hub.json"))
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADAPTERKIT_HUB", raising=False)
    assert main(["login", "--endpoint", hub.url, "--token", "akh_wrong"]) == 2
    assert "not known to this hub" in capsys.readouterr().err
    assert main(["login", "--endpoint", hub.url, "--token", hub.alice]) == 0
    assert "as alice" in capsys.readouterr().out
    assert oct((tmp_path / "hub.json").stat().st_mode & 0o777) == "0o600"
    local = lora_bert(seed=5)
    local.kit.save("a", tmp_path / "saved")
    assert main(["push", str(tmp_path / "saved"), "alice/cli", "--private"]) == 0
    commit = capsys.readouterr().out.strip()
    assert len(commit) == 40
    assert main(["pull", f"hub://alice/cli@{commit}", "--out", str(tmp_path / "pulled")]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "pulled"
    saved = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert json.loads((tmp_path / "pulled" / "adapter_config.json").read_text()) == saved
    assert main(["pull", "alice/cli", "--token", hub.bob]) == 2  # private: bob cannot see it
    assert "RepoNotFound" in capsys.readouterr().err
