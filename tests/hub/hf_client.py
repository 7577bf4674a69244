"""Stock Hugging Face clients against a running hub, in a process of their own so that
``HF_ENDPOINT`` is set before ``huggingface_hub`` is imported, as users set it.

``python -m tests.hub.hf_client PLAN.json`` runs the steps the plan names and writes
``PLAN.json.out.json`` (results) and ``*.pt`` files (model outputs) beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def download(plan: dict[str, Any], out: dict[str, Any], work: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from peft import PeftModel

    from ..models import build, inputs_for, run

    repo = plan["peft_repo"]
    f = hf_hub_download(repo, "adapter_model.safetensors")
    out["hf_hub_download_sha256"] = sha256(f)
    g = hf_hub_download(repo, "adapter_config.json", revision=plan["peft_commit"])
    out["hf_hub_download_commit_config"] = json.loads(Path(g).read_text())["peft_type"]
    snap = snapshot_download(repo)
    out["snapshot_files"] = sorted(p.name for p in Path(snap).iterdir())
    out["snapshot_sha256"] = {p.name: sha256(p) for p in Path(snap).iterdir()}
    snap_ak = snapshot_download(plan["ak_repo"], revision=plan["ak_tag"])
    out["snapshot_ak_files"] = sorted(p.name for p in Path(snap_ak).iterdir())
    model = PeftModel.from_pretrained(build("bert"), repo).eval()
    torch.save(run(model, "bert", inputs_for("bert")).detach(), work / "peft_output.pt")


def upload(plan: dict[str, Any], out: dict[str, Any], work: Path) -> None:
    from huggingface_hub import HfApi
    from peft import LoraConfig, get_peft_model

    from ..models import build, inputs_for, run

    model = get_peft_model(build("bert"), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()
    torch.save(run(model, "bert", inputs_for("bert")).detach(), work / "uploaded_output.pt")
    folder = Path(tempfile.mkdtemp(dir=work))
    model.save_pretrained(folder)
    api = HfApi()
    api.create_repo(plan["upload_repo"], exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=plan["upload_repo"],
                             commit_message="PEFT checkpoint")
    out["upload_folder_commit"] = info.oid
    again = api.upload_folder(folder_path=str(folder), repo_id=plan["upload_repo"], commit_message="again")
    out["upload_folder_again_commit"] = again.oid  # nothing changed: the client commits nothing
    pushed = model.push_to_hub(plan["push_repo"], commit_message="push_to_hub")
    out["push_to_hub"] = str(getattr(pushed, "oid", pushed))
    out["push_to_hub_files"] = sorted(api.list_repo_files(plan["push_repo"]))


def main() -> None:
    import huggingface_hub
    from huggingface_hub import constants

    plan_path = Path(sys.argv[1])
    plan = json.loads(plan_path.read_text())
    work = plan_path.parent
    out: dict[str, Any] = {"huggingface_hub": huggingface_hub.__version__, "endpoint": constants.ENDPOINT,
                           "hf_endpoint": os.environ.get("HF_ENDPOINT")}
    for step in plan["steps"]:
        {"download": download, "upload": upload}[step](plan, out, work)
    Path(str(plan_path) + ".out.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
