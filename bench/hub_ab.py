"""The hub's download path before and after a change: ``python bench/hub_ab.py REV [--pg=URL]``
serves the same adapters from the adapterkit of git revision ``REV`` (extracted with
``git archive``) and from the working tree, each as ``adapterkit hub serve`` in its own process,
and times ``hf_hub_download`` (a fresh cache per call) of a 1 MB and a 30 MB file against each,
in turns, at 1 and 16 clients. Prints a table and the 1-minute load average; writes nothing.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table
from hub import SIZES, adapter_folder, database, hf_round, hub_process
from hub_refs import pct

ROOT = Path(__file__).resolve().parents[1]


def side(stack: ExitStack, code: Path, scratch: Path, backend: str, pg: str | None) -> tuple[str, str]:
    from adapterkit.io.hub import HubClient

    root = Path(tempfile.mkdtemp(dir=scratch))
    db = stack.enter_context(database(backend, pg))
    where = ["--root", str(root)] + (["--db", db] if db else [])
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "adapterkit.cli", "hub", "token", "create", *where, "--user", "alice",
           "--scope", "write"]  # by that code, so that the database has its own schema
    token = subprocess.run(cmd, cwd=code, env=env, check=True, capture_output=True, text=True).stdout.strip()
    url = stack.enter_context(hub_process(root, db, code))
    client = HubClient(url, token, scratch / "push-cache")
    for label, size in SIZES.items():
        repo = f"alice/dl-{label.replace(' ', '').lower()}"
        client.push_folder(adapter_folder(scratch, size, seed=size), repo)
    return url, token


def main() -> None:
    rev = sys.argv[1]
    pg = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--pg=")), None)
    backend = "postgresql" if pg else "sqlite"
    rounds = {("1 MB", 1): 20, ("1 MB", 16): 4, ("30 MB", 1): 6, ("30 MB", 16): 1}
    start_load = os.getloadavg()[0]
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-ab-")))
        old = scratch / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", rev, "adapterkit"], cwd=ROOT, check=True,
                                 capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        sides = {rev: side(stack, old, scratch, backend, pg),
                 "working tree": side(stack, ROOT, scratch, backend, pg)}
        rows = []
        for (label, clients), calls in rounds.items():
            repo = f"alice/dl-{label.replace(' ', '').lower()}"
            lat: dict[str, list[float]] = {k: [] for k in sides}
            wall = dict.fromkeys(sides, 0.0)
            for _rep in range(3):  # in turns, so that shared load hits both
                for name, (url, token) in sides.items():
                    got, took = hf_round(url, token, repo, clients, calls, scratch)
                    lat[name] += got
                    wall[name] += took
            for name in sides:
                rate = 3 * clients * calls * SIZES[label] / wall[name] / 1e6
                rows.append((label, str(clients), name, f"{1000 * statistics.median(lat[name]):.1f}",
                             f"{1000 * pct(lat[name], 0.99):.1f}", f"{rate:.0f}"))
    print(f"{backend}; 1-minute load average {start_load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(table(rows, ("file", "clients", "server", "p50 ms", "p99 ms", "MB/s")))


if __name__ == "__main__":
    main()
