"""Two hub processes on one database and one blob directory take 50 concurrent pushes from 10
clients to 5 repos: every push lands exactly once or is refused with 409/412, nothing that
landed is lost, and ``adapterkit hub verify`` finds nothing wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from adapterkit.hub.admin import token_create
from adapterkit.hub.server import free_port
from adapterkit.hub.settings import Hub as HubState
from adapterkit.io.hub import HubClient, HubConflictError

from .pg import fresh_database, pg_url

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, PUSHES, REPOS = 10, 5, 5


def serve(root: Path, db_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "adapterkit.cli", "hub", "serve", "--root", str(root), "--port", str(port),
           "--log-level", "warning"] + (["--db", db_url] if db_url else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"hub serve exited: {err}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("hub serve did not start within 120 s")


@pytest.fixture(params=["postgresql", "sqlite"])
def two_hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        db_url = stack.enter_context(fresh_database(pg_url())) if request.param == "postgresql" else None
        root = tmp_path / "root"
        state = HubState.open(root, db_url)  # migrate once and make the token before the servers start
        token = token_create(state, "alice", "write")[0]
        state.close()
        procs = []
        for _ in range(2):
            proc, url = serve(root, db_url)
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
            procs.append(url)
        yield {"urls": procs, "token": token, "root": root, "db": db_url, "backend": request.param}


def folder(base: Path, client: int, push: int, shared: dict[str, torch.Tensor]) -> Path:
    d = base / f"c{client}-p{push}"
    (d / "pushes").mkdir(parents=True)
    (d / "pushes" / f"c{client}-p{push}.txt").write_text(f"client {client}, push {push}\n")
    safetensors.torch.save_file(shared, str(d / "shared.safetensors"))  # the same bytes in every push
    safetensors.torch.save_file({"w": torch.full((64,), float(client * 100 + push))},
                                str(d / "pushes" / f"c{client}-p{push}.safetensors"))
    return d


def test_fifty_concurrent_pushes_on_two_processes(two_hubs: dict[str, Any], tmp_path: Path) -> None:
    urls, token = two_hubs["urls"], two_hubs["token"]
    shared = {"s": torch.arange(4096, dtype=torch.float32)}
    for r in range(REPOS):
        HubClient(urls[r % 2], token).create_repo(f"alice/race-{r}")
    outcomes: list[tuple[int, int, str, str | int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(c: int) -> None:
        hub = HubClient(urls[c % 2], token, tmp_path / f"cache-{c}")
        start.wait()
        for p in range(PUSHES):
            repo = f"alice/race-{(c + p) % REPOS}"
            try:
                result: str | int = hub.push_folder(folder(tmp_path, c, p, shared), repo, replace=False,
                                                    message=f"c{c} p{p}")
            except HubConflictError as exc:
                result = exc.status or -1
            except Exception as exc:  # named in the failure (a client timeout under load, say)
                with lock:
                    errors.append(f"client {c} push {p} to {repo}: {type(exc).__name__}: {exc}")
                return
            with lock:
                outcomes.append((c, p, repo, result))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(outcomes) == CLIENTS * PUSHES, [t.name for t in threads if t.is_alive()]
    refused = [o for o in outcomes if not isinstance(o[3], str)]
    assert all(o[3] in (409, 412) for o in refused), refused
    landed = [o for o in outcomes if isinstance(o[3], str)]
    assert landed, "no push landed"
    reader = HubClient(urls[0], token, tmp_path / "reader")
    for r in range(REPOS):
        repo = f"alice/race-{r}"
        history = reader.http.call("GET", f"/api/models/{repo}/commits/main").json()
        ids = [c["id"] for c in history]
        assert len(ids) == len(set(ids))
        mine = sorted(o[3] for o in landed if o[2] == repo)  # type: ignore[type-var]
        assert sorted(ids[:-1]) == mine  # every landed push once, and nothing else (beside the first)
        files = {s["rfilename"] for s in reader.info(repo)["siblings"]}
        for c, p, _, _ in (o for o in landed if o[2] == repo):
            assert {f"pushes/c{c}-p{p}.txt", f"pushes/c{c}-p{p}.safetensors"} <= files  # nothing lost
    where = ["--root", str(two_hubs["root"])] + (["--db", two_hubs["db"]] if two_hubs["db"] else [])
    done = subprocess.run([sys.executable, "-m", "adapterkit.cli", "hub", "verify", *where, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report
    assert report["missing"] == report["corrupt"] == report["orphaned"] == []
    print(f"{two_hubs['backend']}: {len(landed)} pushes landed, {len(refused)} refused with 412 "
          f"({os.cpu_count()} CPUs)")
