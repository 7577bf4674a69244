"""Stock clients with ``HF_ENDPOINT`` set (in a process of their own): ``hf_hub_download``,
``snapshot_download`` and ``PeftModel.from_pretrained`` fetch adapters pushed by ``kit.push``,
and ``HfApi.upload_folder`` and PEFT's ``push_to_hub`` upload checkpoints that ``kit.load``
reads back, with the same outputs. ``make test-hub-compat`` runs this again on
``huggingface_hub`` 0.36 (``HUB_CLIENT_EXPECT=0.36``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import Hub, lora_bert, output_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def session(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Push two adapters with kit.push, run the stock clients once, and collect what they did."""
    work = tmp_path_factory.mktemp("hf-client")
    local = lora_bert()
    peft_commit = local.kit.push("a", "acme/peft-lora", token=hub.alice, endpoint=hub.url, format="peft")
    local.kit.push("a", "acme/ak-lora", token=hub.alice, endpoint=hub.url)
    from adapterkit.io.hub import HubClient

    client = HubClient(hub.url, hub.alice, work / "cache")
    client.http.call("POST", "/api/models/acme/ak-lora/tag/main", json_body={"tag": "v1"})
    plan = {"steps": ["download", "upload"], "peft_repo": "acme/peft-lora", "peft_commit": peft_commit,
            "ak_repo": "acme/ak-lora", "ak_tag": "v1", "upload_repo": "alice/uploaded",
            "push_repo": "alice/pushed"}
    (work / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.alice, "HF_HOME": str(work / "hf-home"),
           "HF_HUB_DISABLE_XET": "1"}
    done = subprocess.run([sys.executable, "-m", "tests.hub.hf_client", str(work / "plan.json")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads((work / "plan.json.out.json").read_text())
    return {"out": out, "work": work, "local": local, "info": client.info("acme/peft-lora"), "client": client}


def test_the_client_under_test(session: dict[str, Any], hub: Hub) -> None:
    out = session["out"]
    assert out["endpoint"].rstrip("/") == hub.url == out["hf_endpoint"]
    expect = os.environ.get("HUB_CLIENT_EXPECT")
    if expect:
        assert out["huggingface_hub"].startswith(expect), out["huggingface_hub"]


def test_hf_hub_download_and_snapshot_download(session: dict[str, Any]) -> None:
    out, info = session["out"], session["info"]
    listed = {s["rfilename"]: s["sha256"] for s in info["siblings"]}
    assert out["hf_hub_download_sha256"] == listed["adapter_model.safetensors"]
    assert out["hf_hub_download_commit_config"] == "LORA"
    assert out["snapshot_files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert out["snapshot_sha256"] == listed
    assert out["snapshot_ak_files"] == ["README.md", "adapter.safetensors", "adapter_config.json"]


def test_peft_from_pretrained_matches_the_local_adapter(session: dict[str, Any]) -> None:
    got = torch.load(session["work"] / "peft_output.pt")
    torch.testing.assert_close(got, session["local"].expected, atol=1e-5, rtol=0)


def test_upload_folder_then_kit_load(session: dict[str, Any], hub: Hub) -> None:
    out = session["out"]
    assert out["upload_folder_again_commit"] == out["upload_folder_commit"]
    want = torch.load(session["work"] / "uploaded_output.pt")
    got = output_of("hub://alice/uploaded", hub, session["work"] / "cache", token=hub.alice)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got = output_of(f"hub://alice/uploaded@{out['upload_folder_commit']}", hub, session["work"] / "cache",
                    token=hub.alice)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_peft_push_to_hub_then_kit_load(session: dict[str, Any], hub: Hub) -> None:
    out = session["out"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(out["push_to_hub_files"])
    want = torch.load(session["work"] / "uploaded_output.pt")
    got = output_of("hub://alice/pushed", hub, session["work"] / "cache", token=hub.alice)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
