"""The settings of one hub server and the objects every request uses."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .accounts import CallerCache, ensure_epoch
from .audit import PullLog
from .blobs import BlobStore
from .db.engine import Database, migrate, sqlite_url
from .db.models import Setting

GiB = 1 << 30
MiB = 1 << 20
#: file names whose formats can run code when loaded (refused unless ``allow_pickle``)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class HubSettings:
    root: Path
    db_url: str | None = None  # None: SQLite at ROOT/hub.db
    allow_pickle: bool = False
    max_file_bytes: int = 5 * GiB  # one uploaded file
    max_request_bytes: int = 64 * MiB  # any other request body (JSON, an NDJSON commit)
    upload_grace_s: float = 3600.0  # how long a received, uncommitted blob is kept
    regular_max_bytes: int = 1 * MiB  # larger files, and binary ones, go through LFS
    search_exact_max: int = 20_000  # semantic search is exact up to this many vectors, HNSW beyond


class Hub:
    """The database, the blob store and the settings of a running server (or a CLI command)."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        settings.root.mkdir(parents=True, exist_ok=True)
        self.store = BlobStore(settings.root)
        self.db = Database(settings.db_url or sqlite_url(settings.root))
        migrate(self.db)
        self.secret = self._secret()
        ensure_epoch(self.db)
        self.callers = CallerCache(self.db)
        self.pulls = PullLog(self.db)

    def _secret(self) -> bytes:
        """The key that signs upload URLs, shared by every process on this database."""
        for _ in range(2):
            with self.db.read() as s:
                row = s.scalar(select(Setting).where(Setting.key == "upload_key"))
                if row is not None:
                    return bytes.fromhex(row.value)
            try:
                with self.db.write() as s:
                    s.add(Setting(key="upload_key", value=secrets.token_hex(32)))
            except IntegrityError:
                pass  # another process created it first
        raise RuntimeError("could not read or create the upload key")

    def close(self) -> None:
        """Write the queued pull rows, then close the database."""
        self.pulls.close()
        self.db.dispose()

    @classmethod
    def open(cls, root: str | Path, db_url: str | None = None, **options: object) -> Hub:
        return cls(HubSettings(root=Path(root), db_url=db_url, **options))  # type: ignore[arg-type]
