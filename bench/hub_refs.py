"""The reference points of bench/hub.py: reading the blob from the disk itself (``O_DIRECT``, past
the page cache) and from the page cache, copying it locally, a plain GET of the
hub's file into memory, and a static server: the standard library's threaded HTTP server
answering every ``HEAD``/``GET`` with one file (``os.sendfile``) and the headers
``hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``), no database, no auth,
no audit. What ``hf_hub_download`` reaches against it is the client's own ceiling here."""

from __future__ import annotations

import mmap
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def static_server(blob: Path, commit: str, sha256: str) -> Iterator[str]:
    """Serve ``blob`` at every path; yields the base URL."""
    size = blob.stat().st_size

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(200)
            for key, value in (("X-Repo-Commit", commit), ("ETag", f'"{sha256}"'),
                               ("Content-Type", "application/octet-stream"), ("Content-Length", str(size))):
                self.send_header(key, value)
            self.end_headers()

        def do_GET(self) -> None:
            self.do_HEAD()
            self.wfile.flush()
            with open(blob, "rb") as f:
                sent = 0
                while sent < size:
                    sent += os.sendfile(self.connection.fileno(), f.fileno(), sent, size - sent)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def concurrent(clients: int, calls: int, one: Callable[[int], None]) -> tuple[list[float], float]:
    """Latencies of ``clients`` threads making ``calls`` calls each, and the round's wall time."""
    latencies: list[float] = []
    lock, barrier = threading.Lock(), threading.Barrier(clients)

    def run(c: int) -> None:
        barrier.wait()
        for i in range(calls):
            t = time.perf_counter()
            one(c * calls + i)
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def read_direct(blob: Path, chunk: int = 4 << 20) -> int:
    """Read ``blob`` from the disk with ``O_DIRECT`` (no page cache) into one page-aligned buffer;
    returns the bytes read. Raises ``OSError`` where the file system refuses ``O_DIRECT``."""
    fd = os.open(blob, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, chunk)  # anonymous maps are page-aligned, as O_DIRECT needs
    try:
        total = 0
        while n := os.readv(fd, [buf]):
            total += n
        return total
    finally:
        buf.close()
        os.close(fd)


def local_rates(blob: Path, clients: int, calls: int, scratch: Path) -> dict[str, float]:
    """Bytes/s of reading ``blob`` from the disk (``disk``, O_DIRECT), from the page cache
    (``read``) and of copying it (``copy``), ``clients`` threads at once, ``calls`` each."""
    size = blob.stat().st_size

    def disk(_i: int) -> None:
        if read_direct(blob) != size:
            raise OSError(f"O_DIRECT read of {blob} returned fewer than {size} bytes")

    def read(_i: int) -> None:
        with open(blob, "rb") as f:
            while f.read(1 << 20):
                pass

    def copy(i: int) -> None:
        dest = scratch / f"copy-{i}"
        shutil.copyfile(blob, dest)
        dest.unlink()

    out = {}
    for name, fn in (("disk", disk), ("read", read), ("copy", copy)):
        fn(0)  # warm: the page cache holds the blob for read and copy, as it does for the server
        _, wall = concurrent(clients, calls, fn)
        out[name] = clients * calls * size / wall
    return out


def raw_get(url: str, repo: str, token: str) -> None:
    """The server alone: one GET of the file, read into memory and dropped (urllib)."""
    req = urllib.request.Request(f"{url}/{repo}/resolve/main/adapter_model.safetensors",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as resp:
        while resp.read(1 << 20):
            pass
