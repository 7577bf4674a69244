"""``torchrun --nproc_per_node=2`` (gloo, CPU) runs of ``dist_script.py``: DDP ranks agree and
match one process with the same global batch, FSDP2 matches DDP, ``kit.save`` from a sharded
model reloads unsharded with equal outputs, and each distributed trap gets its clear error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("dist_script.py")
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(mode: str, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT), str(out), mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        pytest.fail(f"torchrun {mode} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return [json.loads((out / f"{mode}-{rank}.json").read_text()) for rank in (0, 1)]


def test_ddp_ranks_agree_and_match_one_process(tmp_path) -> None:
    for rank in _torchrun("ddp", tmp_path):
        assert rank["ranks_identical"]
        assert rank["vs_single"] <= TOL


def test_fsdp2_matches_ddp_and_saves_whole(tmp_path) -> None:
    for rank in _torchrun("fsdp", tmp_path):
        assert rank["live_sharded"] and rank["stale_list_detached"]
        assert rank["vs_ddp"] <= TOL and rank["vs_single"] <= TOL
        assert rank["reload_diff"] <= TOL
        assert "cannot add adapter 'late' on a sharded model" in rank["add_after_shard"]
        assert rank["late_absent"]
    assert (tmp_path / "sharded" / "adapter.safetensors").is_file()


def test_distributed_traps_get_clear_errors(tmp_path) -> None:
    for rank in _torchrun("traps", tmp_path):
        assert "adapters ['b'] are trainable but not active" in rank["inactive"]
        assert "changed after the model was wrapped in DDP" in rank["train_after_wrap"]
        assert "changed after the model was wrapped in DDP" in rank["train_after_forward"]
