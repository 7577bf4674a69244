"""The in-memory vector index of one hub process: exact (numpy) search up to ``exact_max``
vectors, an HNSW index (usearch) beyond it.

The database is the truth: before a search the index compares the count and newest update time
of the stored vectors with what it holds and loads what changed (rows updated since its newest
one, less a margin; everything again when rows were deleted). Hits are ids only; the caller
joins them with the database again, so a repo deleted since the last load is never answered.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.models import SearchDoc, as_utc
from .embed import DIM, from_bytes

MARGIN = dt.timedelta(seconds=5)
RECOUNT_S = 10.0
#: how long after a new newest update time the margin is read again on a recount
SETTLE_S = 30.0
ANN_CONNECTIVITY = 16
ANN_EXPANSION_ADD = 128
ANN_EXPANSION_SEARCH = 128


def one_blas_thread() -> Any:
    """A matrix-vector product is memory-bound: on shared CPUs, BLAS threads only wait for each
    other (28 ms instead of 0.07 for 2,000 vectors measured at load 17 on 2 CPUs)."""
    if "blas" not in _state:
        try:
            from threadpoolctl import ThreadpoolController

            _state["blas"] = ThreadpoolController()  # finds the libraries once
        except ImportError:
            _state["blas"] = None
    controller = _state["blas"]
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


_state: dict[str, Any] = {}


class VectorIndex:
    def __init__(self, stamp: str, exact_max: int) -> None:
        self.stamp, self.exact_max = stamp, exact_max
        self.matrix = np.zeros((0, DIM), np.float32)
        self.ids = np.zeros(0, np.int64)
        self.n = 0
        self.row_of: dict[int, int] = {}
        self.newest: dt.datetime | None = None
        self.counted_at = 0.0
        self.newest_seen_at = 0.0
        self.ann: Any = None
        self.lock = threading.RLock()

    # -- keeping up with the database --------------------------------------------------------
    def refresh(self, s: Session) -> None:
        """Load the vectors written since the last look (the newest update time comes from its
        index, so this costs little; only vectors that changed go to the ANN index again);
        every ``RECOUNT_S`` also recount the stamped vectors, and load everything again when
        some were deleted."""
        with self.lock:
            newest = as_utc(s.scalar(select(func.max(SearchDoc.updated_at))))
            recount = time.monotonic() - self.counted_at > RECOUNT_S
            if newest == self.newest and not recount:
                return
            where = SearchDoc.embed_model == self.stamp
            q = select(SearchDoc.repo_id, SearchDoc.embedding).where(where)
            if self.newest is None:
                self._upsert(s.execute(q).tuples().all())
            elif newest != self.newest or time.monotonic() - self.newest_seen_at < SETTLE_S:
                # rows written since, and those of the margin again: a transaction that
                # committed late may carry an older time; after SETTLE_S none is still open
                self._upsert(s.execute(q.where(SearchDoc.updated_at >= self.newest - MARGIN)).tuples().all())
            if newest != self.newest:
                self.newest_seen_at = time.monotonic()
            self.newest = newest
            if recount or self.newest is None:
                count = s.scalar(select(func.count()).select_from(SearchDoc).where(where)) or 0
                self.counted_at = time.monotonic()
                if count != self.n:  # vectors were deleted (or restamped): load everything again
                    self._clear()
                    self._upsert(s.execute(q).tuples().all())

    def _clear(self) -> None:
        self.matrix = np.zeros((0, DIM), np.float32)
        self.ids = np.zeros(0, np.int64)
        self.n, self.row_of, self.ann = 0, {}, None

    def _upsert(self, rows: Sequence[tuple[int, bytes | None]]) -> None:
        fresh = [(i, v) for i, v in rows if v is not None and i not in self.row_of]
        need = self.n + len(fresh)
        if need > len(self.matrix):
            grown = np.zeros((max(need, 2 * len(self.matrix), 1024), DIM), np.float32)
            grown[:self.n] = self.matrix[:self.n]
            ids = np.zeros(len(grown), np.int64)
            ids[:self.n] = self.ids[:self.n]
            self.matrix, self.ids = grown, ids
        changed = []
        for repo_id, data in rows:
            if data is None:
                continue
            row = self.row_of.get(repo_id)
            vector = from_bytes(data)
            if row is None:
                row = self.row_of[repo_id] = self.n
                self.ids[row] = repo_id
                self.n += 1
            elif np.array_equal(self.matrix[row], vector):
                continue  # a row of the margin read again, unchanged: the ANN index keeps it
            self.matrix[row] = vector
            changed.append(row)
        if self.ann is not None and changed:
            self._ann_put(np.asarray(changed, np.int64))

    # -- the ANN index -----------------------------------------------------------------------
    def _ann_put(self, rows: np.ndarray) -> None:
        keys = rows.astype(np.uint64)
        present = [k for k in keys.tolist() if self.ann.contains(k)]
        if present:
            self.ann.remove(present)
        self.ann.add(keys, self.matrix[rows], threads=1)

    def build_ann(self) -> None:
        """Build the HNSW index over every vector held (once; later updates are added to it)."""
        from usearch.index import Index

        with self.lock:
            index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=ANN_CONNECTIVITY,
                          expansion_add=ANN_EXPANSION_ADD, expansion_search=ANN_EXPANSION_SEARCH)
            if self.n:
                index.add(np.arange(self.n, dtype=np.uint64), self.matrix[:self.n])
            self.ann = index

    # -- searching ---------------------------------------------------------------------------
    @property
    def uses_ann(self) -> bool:
        return self.n > self.exact_max

    def exact(self, q: np.ndarray, k: int, ids: list[int] | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest of all vectors (or of the vectors of ``ids``), best first."""
        with self.lock:
            with one_blas_thread():
                if ids is None:
                    rows = np.arange(self.n)
                    scores = self.matrix[:self.n] @ q
                else:
                    rows = np.asarray([self.row_of[i] for i in ids if i in self.row_of], np.int64)
                    scores = self.matrix[rows] @ q if len(rows) else np.zeros(0, np.float32)
            return self._top(rows, scores, k)

    def _top(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
        part = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        order = part[np.argsort(-scores[part], kind="stable")]
        return [(int(self.ids[rows[j]]), float(scores[j])) for j in order]

    def approximate(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest by the HNSW index (built on first use)."""
        if self.ann is None:
            self.build_ann()
        with self.lock:
            found = self.ann.search(q, min(k, max(self.n, 1)))
            keys, dist = np.asarray(found.keys, np.int64), np.asarray(found.distances, np.float32)
            return [(int(self.ids[r]), float(1.0 - d)) for r, d in zip(keys, dist) if 0 <= r < self.n]

    def nearest(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        return self.approximate(q, k) if self.uses_ann else self.exact(q, k)


_indexes: weakref.WeakKeyDictionary[Any, VectorIndex] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def index_for(owner: Any, stamp: str, exact_max: int) -> VectorIndex:
    """The vector index kept for ``owner`` (a hub's database), created on first use."""
    with _guard:
        index = _indexes.get(owner)
        if index is None or index.stamp != stamp:
            index = _indexes[owner] = VectorIndex(stamp, exact_max)
        index.exact_max = exact_max
        return index
