"""Where one ``hf_hub_download`` of a 30 MB adapter spends its time: ``python bench/hub_profile.py
[REV]`` serves the adapter from the working tree (and, with ``REV``, from that git revision's
adapterkit too, in turns) as ``adapterkit hub serve``, and prints per download

- the wall time, the client's CPU time (this process) and the server's CPU time (its
  ``/proc/PID/stat``), for ``hf_hub_download`` into a fresh cache and for a bare GET that
  receives into one reused buffer (the least a client can do);
- the same bytes read from the blob file and copied to a new file (the local references);
- a cProfile of one ``hf_hub_download`` in the client (the top functions by own time).

Prints only; writes nothing. The 1-minute load average is printed at the start and the end.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table
from hub import adapter_folder, hub_process

ROOT = Path(__file__).resolve().parents[1]
SIZE, CALLS, REPO, FILE = 30 << 20, 10, "alice/dl-30mb", "adapter_model.safetensors"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_get(url: str, token: str) -> None:
    """GET the file over one socket, receiving into a reused buffer (no parsing beyond the head)."""
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"GET /{REPO}/resolve/main/{FILE} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
        buf = bytearray(1 << 20)
        while s.recv_into(buf):
            pass


def measure(fn: Callable[[int], None], pid: int) -> tuple[float, float, float]:
    wall, client, server = [], [], []
    for i in range(CALLS):
        c0, s0, t0 = time.process_time(), cpu_s(pid), time.perf_counter()
        fn(i)
        wall.append(time.perf_counter() - t0)
        client.append(time.process_time() - c0)
        server.append(cpu_s(pid) - s0)
    # CPU times tick in 1/CLK_TCK s (10 ms): their mean over the calls, not a median of ticks
    return statistics.median(wall), sum(client) / CALLS, sum(server) / CALLS


def side(stack: ExitStack, code: Path, scratch: Path) -> tuple[str, str, int, Path]:
    from adapterkit.io.hub import HubClient

    root = Path(tempfile.mkdtemp(dir=scratch))
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "adapterkit.cli", "hub", "token", "create", "--root", str(root),
           "--user", "alice", "--scope", "write"]
    token = subprocess.run(cmd, cwd=code, env=env, check=True, capture_output=True, text=True).stdout.strip()
    pids: list[int] = []
    url = stack.enter_context(hub_process(root, None, code, pids))
    client = HubClient(url, token, scratch / "push-cache")
    client.push_folder(adapter_folder(scratch, SIZE, seed=SIZE), REPO)
    sha = next(s["sha256"] for s in client.info(REPO)["siblings"] if s["rfilename"] == FILE)
    return url, token, pids[0], root / "blobs" / sha[:2] / sha[2:4] / sha


def local_rows(blob: Path, scratch: Path) -> list[tuple[str, ...]]:
    def read(_i: int) -> None:
        with open(blob, "rb") as f:
            while f.read(1 << 20):
                pass

    def copy(i: int) -> None:
        shutil.copyfile(blob, scratch / f"copy-{i}")
        (scratch / f"copy-{i}").unlink()

    rows = []
    for label, fn in (("read", read), ("copy", copy)):
        wall, client, _ = measure(fn, os.getpid())
        rows.append(("local", label, f"{1000 * wall:.0f}", f"{SIZE / wall / 1e6:.0f}",
                     f"{1000 * client:.0f}", "-"))
    return rows


def code_trees(scratch: Path) -> dict[str, Path]:
    """The working tree, and before it the git revision named on the command line (if any)."""
    if len(sys.argv) < 2:
        return {"working tree": ROOT}
    old = scratch / "before"
    old.mkdir()
    archive = subprocess.run(["git", "archive", sys.argv[1], "adapterkit"], cwd=ROOT, check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    return {sys.argv[1]: old, "working tree": ROOT}


def main() -> None:
    from huggingface_hub import hf_hub_download

    start_load = os.getloadavg()[0]
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-profile-")))
        sides = {name: side(stack, code, scratch) for name, code in code_trees(scratch).items()}
        blob = next(iter(sides.values()))[3]
        rows, profile = [], ""
        for name, (url, token, pid, _blob) in sides.items():
            def hf(i: int, url: str = url, token: str = token, name: str = name) -> None:
                cache = scratch / f"cache-{name}-{i}"
                hf_hub_download(REPO, FILE, endpoint=url, token=token, cache_dir=str(cache))
                shutil.rmtree(cache)

            def bare(_i: int, url: str = url, token: str = token) -> None:
                bare_get(url, token)

            hf(-1)  # warm the connection pool and the page cache
            for label, fn in (("hf_hub_download", hf), ("bare GET", bare)):
                wall, client, server = measure(fn, pid)
                rows.append((name, label, f"{1000 * wall:.0f}", f"{SIZE / wall / 1e6:.0f}",
                             f"{1000 * client:.0f}", f"{1000 * server:.0f}"))
            if name == "working tree":
                pr = cProfile.Profile()
                pr.runcall(hf, 99)
                out = io.StringIO()
                pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(8)
                profile = out.getvalue()

        rows += local_rows(blob, scratch)
    print(f"30 MB; wall: median of {CALLS} calls, CPU: mean; 1-minute load average {start_load:.1f} "
          "at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(table(rows, ("server", "fetch", "wall ms", "MB/s", "client CPU ms", "server CPU ms")))
    print("\ncProfile of one hf_hub_download against the working tree's hub (client side):")
    print(profile[profile.find("   ncalls"):])


if __name__ == "__main__":
    main()
