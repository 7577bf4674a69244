"""Seeding bench/search.py's databases (``pool_vectors``, ``seed``), and keeping them between
runs (seeding 100,000 cards takes minutes): under ``runs/search/KEY/`` (gitignored), ``KEY`` a
digest of the number of cards, the pool of exactly embedded cards, the embedding model's stamp
and the code that makes the cards and their search documents (bench/search_data.py,
``catalog.document``, ``catalog.indexer``), so a change to any of them seeds again.

- ``sqlite/``: the SQLite hub (``hub.db``);
- ``vectors.npy``: every card's vector;
- ``meta.json``: how the vectors were made and how long each back end took to seed, written
  once a back end is seeded (a seeding that was interrupted is started again);
- PostgreSQL: the database ``searchbench_KEY`` on the cluster of ``--pg``, kept after the run.

The hub opens a cached database as any other, so schema migrations added since it was seeded
run on it. ``--reseed`` drops what is cached and seeds again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from search_data import Card, card
from sqlalchemy import bindparam, update

from adapterkit.hub.catalog.document import compose
from adapterkit.hub.catalog.embed import embedder, to_bytes
from adapterkit.hub.catalog.indexer import store_new
from adapterkit.hub.db.models import Account, Repo, SearchDoc
from adapterkit.hub.settings import Hub

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / "runs" / "search"
BATCH = 5000
SOURCES = (HERE / "search_data.py", ROOT / "adapterkit/hub/catalog/document.py",
           ROOT / "adapterkit/hub/catalog/indexer.py")


def cache_key(cards: int, pool: int, stamp: str) -> str:
    h = hashlib.sha256(f"{cards}/{pool}/{stamp}".encode())
    for path in SOURCES:
        h.update(path.read_bytes())
    return f"{cards}-{pool}-{h.hexdigest()[:12]}"


class Cache:
    """One key's folder: what is seeded there, and the vectors."""

    def __init__(self, key: str, reseed: bool) -> None:
        self.key, self.dir = key, CACHE / key
        if reseed and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "meta.json"
        self.meta: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"seed_s": {}}
        self.reseed = reseed

    def save(self) -> None:
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        tmp.replace(self.dir / "meta.json")

    def seeded(self, backend: str) -> bool:
        return backend in self.meta["seed_s"]

    def mark(self, backend: str, seconds: float) -> None:
        self.meta["seed_s"][backend] = seconds
        self.save()

    def sqlite_root(self) -> Path:
        """The SQLite hub's folder, emptied first when it is not seeded yet."""
        root = self.dir / "sqlite"
        if not self.seeded("sqlite") and root.exists():
            shutil.rmtree(root)
        root.mkdir(exist_ok=True)
        return root

    @property
    def vectors_path(self) -> Path:
        return self.dir / "vectors.npy"


@contextmanager
def pg_database(pg: str, cache: Cache) -> Iterator[str]:
    """The URL of this key's PostgreSQL database, created (and the back end marked unseeded)
    when the cluster lacks it; kept after the run."""
    import psycopg

    name = "searchbench_" + cache.key.replace("-", "_")
    with psycopg.connect(pg, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and (cache.reseed or not cache.seeded("postgresql")):
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            exists = None
        if not exists:
            cache.meta["seed_s"].pop("postgresql", None)
            conn.execute(f"CREATE DATABASE {name}")
    yield str(pg).rsplit("/", 1)[0] + "/" + name


def pool_vectors(cards: list[Card], docs: list[Any], pool: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors of every card: the first ``pool`` embedded, the others combined (module doc)."""
    emb = embedder()
    t0 = time.perf_counter()
    exact = emb.embed([d.summary for d in docs[:pool]])
    took = time.perf_counter() - t0
    by_topic: dict[tuple[str, str], list[int]] = {}
    by_lang: dict[str, list[int]] = {}
    for j, c in enumerate(cards[:pool]):
        by_topic.setdefault((c.task, c.domain), []).append(j)
        by_lang.setdefault(c.language, []).append(j)
    out = np.zeros((len(cards), exact.shape[1]), np.float32)
    out[:pool] = exact
    for i in range(pool, len(cards)):
        c = cards[i]
        same = by_topic.get((c.task, c.domain)) or by_lang.get(c.language) or [i % pool]
        langs = by_lang.get(c.language) or [i % pool]
        v = exact[same[i % len(same)]] + 0.5 * exact[langs[(i // 7) % len(langs)]]
        out[i] = v / np.linalg.norm(v)
    return out, {"pool": pool, "pool_embed_s": round(took, 2), "pool_texts_per_s": round(pool / took, 1)}


def seed(hub: Hub, cards: list[Card], docs: list[Any], vectors: np.ndarray, stamp: str) -> float:
    t0 = time.perf_counter()
    owners = sorted({c.owner for c in cards})
    owner_id = {name: k + 2 for k, name in enumerate(owners)}
    when = dt.datetime.now(dt.timezone.utc)
    with hub.db.write() as s:
        s.execute(Account.__table__.insert(), [{"id": 1, "name": "bench", "kind": "user", "created_at": when}]
                  + [{"id": i, "name": n, "kind": "org", "created_at": when} for n, i in owner_id.items()])
    for lo in range(0, len(cards), BATCH):
        part = range(lo, min(lo + BATCH, len(cards)))
        with hub.db.write() as s:
            s.execute(Repo.__table__.insert(), [
                {"id": i + 1, "full_name": cards[i].repo, "owner_id": owner_id[cards[i].owner],
                 "private": cards[i].private, "created_at": when - dt.timedelta(seconds=i)} for i in part])
            store_new(s, [(i + 1, f"{i:040x}", docs[i], to_bytes(vectors[i]), stamp) for i in part])
    table_ = SearchDoc.__table__
    stmt = update(table_).where(table_.c.repo_id == bindparam("rid")).values(downloads=bindparam("d"))
    with hub.db.write() as s:
        s.connection().execute(stmt, [{"rid": i + 1, "d": c.downloads} for i, c in enumerate(cards)])
    if hub.db.dialect == "postgresql":
        with hub.db.write_engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    return time.perf_counter() - t0


def prepare(args: argparse.Namespace, cache: Cache,
            backends: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """The documents of the last cards (for the upload cost) and the vectors' description; the
    cards, documents and vectors of all cards only when a back end is to be seeded."""
    if all(cache.seeded(b) for b in backends) and cache.vectors_path.exists():
        tail = range(max(args.cards - 200, 0), args.cards)
        return [compose(c.repo, c.meta, c.readme, c.requires) for c in map(card, tail)], cache.meta["vectors"]
    cards = [card(i) for i in range(args.cards)]
    docs = [compose(c.repo, c.meta, c.readme, c.requires) for c in cards]
    if cache.vectors_path.exists():
        vectors = np.load(cache.vectors_path)
    else:
        vectors, cache.meta["vectors"] = pool_vectors(cards, docs, args.pool)
        np.save(cache.vectors_path, vectors)
        cache.save()
    SEEDING.update(cards=cards, docs=docs, vectors=vectors)
    return docs, cache.meta["vectors"]


SEEDING: dict[str, Any] = {}


def open_hubs(stack: ExitStack, args: argparse.Namespace, cache: Cache,
              backends: list[str]) -> dict[str, Hub]:
    """The hubs over the cached databases, seeding those not seeded yet."""
    hubs = {}
    for b in backends:
        url = stack.enter_context(pg_database(args.pg, cache)) if b == "postgresql" else None
        hubs[b] = Hub.open(cache.sqlite_root() if b == "sqlite" else cache.dir / "pg-root", url)
        stack.callback(hubs[b].close)
        if cache.seeded(b):
            print(f"{b}: {args.cards} cards seeded before ({cache.dir})", flush=True)
            continue
        took = seed(hubs[b], SEEDING["cards"], SEEDING["docs"], SEEDING["vectors"], embedder().stamp)
        cache.mark(b, round(took, 1))
        print(f"{b}: seeded {args.cards} cards in {took:.1f} s ({cache.dir})", flush=True)
    return hubs
