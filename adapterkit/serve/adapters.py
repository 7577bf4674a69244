"""The server's adapter cache, in three tiers.

- **Registered**: a served name, its source (as given and as resolved to a directory), the
  content hash of that directory's files, and its method. Registering loads the adapter once, so
  an adapter for another base, a corrupt file or a method that cannot run per row is refused
  before the name exists.
- **Resident**: adapters attached to the model, keyed by content hash (two names with the same
  files share one copy; a name reloaded with new files is a new copy, never the stale one), kept
  in least-recently-used order within a byte budget. Only adapters no waiting or running
  request holds are evicted, so the budget is exceeded only while requests hold more.
- **Active**: the adapters of the rows of the current step (the engine's route).

Loading (reading, hashing, building modules, copying tensors) runs on a loader thread; only
``attach`` and ``remove``, which change the model's adapter slots, run on the engine thread,
between steps. A request whose adapter is cold waits for it; the others are not delayed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.base import MethodKind
from ..errors import AdapterError, LoadError
from ..io.kitio import load_adapter
from ..io.resolve import resolve
from ..kit import AdapterKit


def content_hash(directory: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``directory``."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def kit_name(digest: str) -> str:
    """The name under which the content ``digest`` sits in the kit."""
    return f"h{digest[:24]}"


@dataclass
class Registered:
    name: str
    source: str
    path: Path
    digest: str
    method: str
    kind: MethodKind
    created: int = field(default_factory=lambda: int(time.time()))
    origin: tuple[str, str] | None = None  # (hub repo, revision) of a hub:// source


@dataclass
class Resident:
    digest: str
    name: str  # in the kit
    nbytes: int
    method: str
    kind: MethodKind
    pins: int = 0
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # trained heads' tensors


class _Planning:
    """The kit as a loader thread sees it: everything but ``attach``, which is kept for the
    engine thread."""

    def __init__(self, kit: AdapterKit) -> None:
        self._kit = kit
        self.record: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kit, name)

    def attach(self, record: Any) -> None:
        self.record = record


@dataclass
class Loaded:
    """A planned, filled adapter not yet attached, and what it came from."""

    record: Any
    digest: str
    path: Path
    nbytes: int
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)


class AdapterCache:
    """``engine_call(fn)`` runs ``fn`` on the engine thread and returns a Future of its result."""

    def __init__(self, kit: AdapterKit, budget_bytes: int | None,
                 engine_call: Callable[[Callable[[], Any]], Future],
                 on_event: Callable[[str], None] = lambda kind: None) -> None:
        self.kit = kit
        self.budget = budget_bytes
        self.engine_call = engine_call
        self.on_event = on_event  # "load" / "evict", for the metrics
        self.lock = threading.RLock()  # the registry, and the model's module tree while planning
        self.registered: dict[str, Registered] = {}
        self.resident: OrderedDict[str, Resident] = OrderedDict()  # engine thread only
        self.loading: dict[str, Future] = {}  # engine thread only
        self.waiting_pins: dict[str, int] = {}  # pins of requests for adapters being loaded
        self.failed: dict[str, str] = {}  # digest -> why its reload failed
        self.paths: dict[str, Path] = {}  # digest -> a directory holding it
        self.retired: set[str] = set()  # digests no name refers to: removed once unpinned
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-loader")

    # -- loader thread -------------------------------------------------------------------------
    def _load(self, path: Path, digest: str | None = None) -> Loaded:
        digest = digest or content_hash(path)
        planning = _Planning(self.kit)
        with self.lock:
            if kit_name(digest) in self.kit.names:
                return Loaded(None, digest, path, 0)
            load_adapter(planning, path, kit_name(digest))  # type: ignore[arg-type]
            record = planning.record
            heads = {h: {k: t.detach().clone() for k, t in
                         self.kit.model.get_submodule(h).state_dict().items()}
                     for h in record.heads}
        if not record.spec.routable:
            raise LoadError(f"{path}: the method {record.spec.name!r} cannot run per row "
                            "(not routable), so it cannot be served with other adapters")
        nbytes = sum(p.numel() * p.element_size() for p in record.parameters())
        return Loaded(record, digest, path, nbytes, heads)

    # -- engine thread -------------------------------------------------------------------------
    def _attach(self, loaded: Loaded) -> Resident:
        digest = loaded.digest
        hit = self.resident.get(digest)
        if hit is not None:
            return hit
        record = loaded.record
        with self.lock:
            self.kit.attach(record)
        self.paths[digest] = loaded.path
        res = Resident(digest, record.name, loaded.nbytes, record.spec.name, record.spec.kind,
                       pins=self.waiting_pins.pop(digest, 0), heads=loaded.heads)
        self.resident[digest] = res
        self.on_event("load")
        self.evict()
        return res

    def evict(self) -> None:
        """Remove unpinned adapters, least recently used first, while over the byte budget, and
        retired ones no request holds."""
        for digest in [d for d in self.retired if d in self.resident]:
            if self.resident[digest].pins == 0 and not self._named(digest):
                self._remove(digest)
        if self.budget is None:
            return
        for digest in list(self.resident):
            if self.resident_bytes() <= self.budget:
                break
            if self.resident[digest].pins == 0:
                self._remove(digest)
                self.on_event("evict")

    def _remove(self, digest: str) -> None:
        res = self.resident.pop(digest)
        with self.lock:
            self.kit.remove(res.name)
        self.retired.discard(digest)

    def _named(self, digest: str) -> bool:
        with self.lock:
            return any(r.digest == digest for r in self.registered.values())

    def resident_bytes(self) -> int:
        return sum(r.nbytes for r in self.resident.values())

    def acquire(self, digests: list[str]) -> None:
        """Pin ``digests`` for a request (an adapter still loading gets its pins when it
        arrives) and start loading the cold ones."""
        for d in digests:
            res = self.resident.get(d)
            if res is not None:
                res.pins += 1
                self.resident.move_to_end(d)
                continue
            self.waiting_pins[d] = self.waiting_pins.get(d, 0) + 1
            if d not in self.loading:
                self._start_load(d)

    def _start_load(self, digest: str) -> None:
        path = self.paths.get(digest)
        if path is None:
            self.failed[digest] = f"no source is known for adapter content {digest[:12]}"
            return
        self.failed.pop(digest, None)
        future = self.pool.submit(self._load, path, None)
        self.loading[digest] = future

        def finished(f: Future) -> None:
            def on_engine() -> None:
                self.loading.pop(digest, None)
                error = f.exception()
                if error is not None:
                    self.failed[digest] = f"reloading {path} failed: {error}"
                elif f.result().digest != digest:
                    self.failed[digest] = (f"the files at {path} changed since the adapter was "
                                           "registered; load it again under a name")
                elif f.result().record is not None:
                    self._attach(f.result())
            self.engine_call(on_engine)

        future.add_done_callback(finished)

    def ready(self, digests: list[str]) -> bool:
        return all(d in self.resident for d in digests)

    def load_failed(self, digests: list[str]) -> str | None:
        """Why a cold adapter of ``digests`` could not be loaded again (its files changed or
        went away), or None."""
        for d in digests:
            if d not in self.resident and d in self.failed:
                return self.failed[d]
        return None

    def release(self, digests: list[str]) -> None:
        for d in digests:
            res = self.resident.get(d)
            if res is not None:
                res.pins -= 1
            elif self.waiting_pins.get(d, 0) > 0:
                self.waiting_pins[d] -= 1
        self.evict()

    # -- front end -----------------------------------------------------------------------------
    def register(self, name: str, source: str | os.PathLike, path: Path | None = None,
                 origin: tuple[str, str] | None = None) -> Registered:
        """Resolve (unless ``path`` is where it was pulled to), load and attach ``source`` as
        ``name`` (blocking; not on the engine thread). The registry is unchanged if this raises."""
        with self.lock:
            if name in self.registered:
                raise AlreadyLoaded(name)
        path = resolve(source) if path is None else path
        loaded = self.pool.submit(self._load, path, None).result()
        if loaded.record is not None:
            res = self.engine_call(lambda: self._attach(loaded)).result()
        else:
            res = self.engine_call(lambda: self._resident_or_load(loaded)).result()
        reg = Registered(name, os.fspath(source), path, loaded.digest, res.method, res.kind,
                         origin=origin)
        with self.lock:
            if name in self.registered:
                raise AlreadyLoaded(name)
            self.registered[name] = reg
        return reg

    def _resident_or_load(self, loaded: Loaded) -> Resident:
        hit = self.resident.get(loaded.digest)
        if hit is not None:
            return hit
        raise LoadError(f"adapter content {loaded.digest[:12]} is being loaded; retry")

    def unregister(self, name: str) -> Registered:
        with self.lock:
            reg = self.registered.pop(name, None)
        if reg is None:
            raise KeyError(name)

        def retire() -> None:
            if not self._named(reg.digest):
                self.retired.add(reg.digest)
            self.evict()
        self.engine_call(retire).result()
        return reg

    def lookup(self, name: str) -> Registered | None:
        with self.lock:
            return self.registered.get(name)

    def names(self) -> list[Registered]:
        with self.lock:
            return list(self.registered.values())


class AlreadyLoaded(AdapterError):
    """A load of a name that is already loaded."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The lora adapter '{name}' has already been loaded.")
        self.name = name
