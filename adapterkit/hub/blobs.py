"""The content-addressed blob store under ``ROOT/blobs``: one file per SHA-256, named by it.

Bytes arrive in ``ROOT/staging`` and are hashed while they are written; only a file whose
SHA-256 and size match what the client announced is moved into place, so a stored blob always
holds the bytes its name says. Writers that make a blob referenced hold the store's shared lock
from moving the file in to committing the database rows; ``purge`` holds the exclusive lock while
it deletes rows and files, so a blob is never deleted while a commit is about to use it.
Several processes may share one store: the locks are ``flock`` locks on ``ROOT/locks/gc.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import BadContent, TooLarge
from .names import SHA256

CHUNK = 1 << 20


@dataclass
class Staged:
    """A fully received upload in the staging folder, not yet in the store."""

    path: Path
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.staging = self.root / "staging"
        self.locks = self.root / "locks"
        for d in (self.blobs, self.staging, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    # -- naming ------------------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def names(self) -> Iterator[Path]:
        """Every file under ``blobs/`` (stored blobs, and anything else that is there)."""
        for dirpath, _dirs, files in os.walk(self.blobs):
            for f in files:
                yield Path(dirpath) / f

    # -- receiving ---------------------------------------------------------------------------
    def new_staging_file(self) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(dir=self.staging, prefix="up-")
        return os.fdopen(fd, "wb"), Path(name)

    def stage_bytes(self, data: bytes) -> Staged:
        f, path = self.new_staging_file()
        with f:
            f.write(data)
        return Staged(path, hashlib.sha256(data).hexdigest(), len(data))

    @staticmethod
    def check(staged: Staged, sha256: str | None, size: int | None) -> None:
        """Refuse (and delete) a staged file whose hash or size differs from the announced one."""
        problems = []
        if size is not None and staged.size != size:
            problems.append(f"{staged.size} bytes arrived, {size} were announced")
        if sha256 is not None and staged.sha256 != sha256:
            problems.append(f"the bytes hash to {staged.sha256}, the announced oid is {sha256}")
        if problems:
            staged.path.unlink(missing_ok=True)
            raise BadContent("upload refused: " + "; ".join(problems))

    def install(self, staged: Staged) -> Path:
        """Move a checked staged file into place (the caller holds :meth:`writing`)."""
        dest = self.path(staged.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, dest)  # atomic: readers see the old file or the new one
        return dest

    def remove(self, sha256: str) -> bool:
        """Delete a blob's file (the caller holds :meth:`collecting`); False if it was absent."""
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    # -- locks -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        with open(self.locks / "gc.lock", "a+b") as f:
            fcntl.flock(f.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Shared: held while a blob is moved in and the rows that reference it are committed."""
        return self._lock(fcntl.LOCK_SH)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive: held by purge while it deletes unreferenced blobs."""
        return self._lock(fcntl.LOCK_EX)


class Receiver:
    """Hashes and writes a streamed upload into the staging folder, enforcing a size limit."""

    def __init__(self, store: BlobStore, limit: int) -> None:
        self.limit = limit
        self.file, self.path = store.new_staging_file()
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise TooLarge(f"upload larger than the server's limit of {self.limit} bytes per file")
        self.hash.update(chunk)
        self.file.write(chunk)

    def finish(self) -> Staged:
        self.file.close()
        return Staged(self.path, self.hash.hexdigest(), self.size)

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
