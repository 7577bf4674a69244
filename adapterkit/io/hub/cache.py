"""The hub client's content-addressed cache, shared between revisions and repos.

``ROOT/blobs/<sha256>`` holds each file's bytes once; ``ROOT/snapshots/<hub>/<owner>/<name>/<commit>/``
is a directory of hard links (copies where links fail) to those blobs, which is what loaders
read; ``ROOT/refs/<hub>/<owner>/<name>/<revision>`` remembers the commit a revision last named.
A blob enters the cache only after its SHA-256 and size match what the hub announced.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import IntegrityError

CHUNK = 1 << 20


def default_root() -> Path:
    env = os.environ.get("ADAPTERKIT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adapterkit"
    return base / "hub"


def hub_key(endpoint: str) -> str:
    """A folder name for an endpoint: its host and port, plus a short hash of the whole URL."""
    host = re.sub(r"^[a-z]+://", "", endpoint).split("/")[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", host) + "-" + hashlib.sha256(endpoint.encode()).hexdigest()[:8]


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """The SHA-256 and size of a file, read in 1 MiB chunks (the client's cache and the hub's
    blob store both use it)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Cache:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.blobs = self.root / "blobs"

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256

    def verified(self, sha256: str, size: int) -> bool:
        """Whether the cached blob exists and still hashes to its name (a corrupt one is deleted)."""
        path = self.blob(sha256)
        if not path.is_file():
            return False
        if sha256_file(path) == (sha256, size):
            return True
        path.unlink(missing_ok=True)
        return False

    def writer(self) -> BlobWriter:
        self.blobs.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self)

    def snapshot_dir(self, key: str, repo: str, commit: str) -> Path:
        return self.root / "snapshots" / key / repo / commit

    def link_snapshot(self, key: str, repo: str, commit: str, files: dict[str, str]) -> Path:
        """The snapshot directory of ``commit``: each path linked to its blob (path -> sha256)."""
        final = self.snapshot_dir(key, repo, commit)
        if final.is_dir() and all((final / p).is_file() for p in files):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{commit}."))
        try:
            for path, sha in files.items():
                dest = tmp / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.blob(sha), dest)
                except OSError:
                    shutil.copyfile(self.blob(sha), dest)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def remember(self, key: str, repo: str, revision: str, commit: str) -> None:
        path = self.root / "refs" / key / repo / revision
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(commit)

    def recall(self, key: str, repo: str, revision: str) -> str | None:
        path = self.root / "refs" / key / repo / revision
        return path.read_text().strip() if path.is_file() else None


class BlobWriter:
    """Receives one download: hashes it and moves it into the cache only if it matches."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        fd, name = tempfile.mkstemp(dir=cache.blobs, prefix=".part-")
        self.file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)
        self.file.write(chunk)

    def commit(self, label: str, sha256: str, size: int) -> Path:
        self.file.close()
        got = self.hash.hexdigest()
        if got != sha256 or self.size != size:
            self.path.unlink(missing_ok=True)
            raise IntegrityError(f"{label}: the downloaded bytes ({self.size} bytes, SHA-256 {got}) differ "
                                 f"from what the hub announced ({size} bytes, SHA-256 {sha256}); nothing "
                                 "was cached")
        dest = self.cache.blob(sha256)
        os.replace(self.path, dest)
        return dest

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
