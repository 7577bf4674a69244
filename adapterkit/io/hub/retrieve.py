"""``kit.retrieve``: search the hub for adapters that fit the kit's model, pull the best ``k``,
compose them with weights from their scores, activate the composition and say why.

Steps (Stylus-like retrieval, then composition):

1. search (:func:`adapterkit.io.hub.search.search`, ``compatible_with`` the kit's model, so only
   adapters whose sites and shapes fit come back) among the adapters the token can read;
2. for each hit, best first, until ``k`` are chosen: ask the hub for the commit the hit names
   (or ``main``'s) with the token, so a repo it cannot read (or one purged since the search) is
   skipped and never pulled; pull that commit and load it; an adapter
   that does not load onto the model (another base, a non weight-delta method in ``average``
   mode) is skipped with the reason;
3. weights from the scores ``s_i`` of the chosen: ``"normalize"`` (default) ``w_i = s_i / sum s``
   (scores below 0 count as 0; all zero: ``1/k``), or ``"softmax"``
   ``w_i = exp(s_i / T) / sum exp(s_j / T)`` at ``temperature`` T;
4. ``mode="average"``: ``Average(*names, weights=w)``, the output ``h + sum_i w_i delta_i``;
   ``mode="stack"``: ``Stack(Average(n_1, weights=[w_1]), ...)``, best first, each adapter
   applied in turn with its delta scaled by its weight.

A failure after some adapters were loaded removes them again: the kit is as it was.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...compose.blocks import Average, Block, Stack
from ...core.base import MethodKind
from ...errors import AdapterError
from .client import HubClient
from .errors import HubClientError, RepoNotFoundError

if TYPE_CHECKING:
    from ...kit import AdapterKit

MODES = ("average", "stack")
WEIGHTINGS = ("normalize", "softmax")
Search = Callable[..., Sequence[Any]]


@dataclass
class Choice:
    """One retrieved adapter: where it came from, its score and weight, and why it was chosen."""

    repo_id: str
    revision: str
    commit: str
    score: float
    weight: float
    name: str
    reason: str


@dataclass
class Retrieval:
    """What :func:`retrieve` did: the ``composition`` it activated, the adapters it chose (best
    first) and the hits it skipped, with why. ``kit.retrieve`` returns the composition and keeps
    this in ``kit.last_retrieval``."""

    query: str
    mode: str
    weighting: str
    composition: Block | str
    chosen: list[Choice]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.chosen]

    def report(self) -> str:
        lines = [f"retrieve {self.query!r}: {self.mode} of {len(self.chosen)} adapter(s), weights by "
                 f"{self.weighting}"]
        for c in self.chosen:
            lines.append(f"  {c.weight:.3f}  {c.repo_id}@{c.revision} ({c.commit[:12]})  score "
                         f"{c.score:.4f}  as {c.name}: {c.reason}")
        lines += [f"  skipped {repo}: {why}" for repo, why in self.skipped]
        return "\n".join(lines)


def weights_from_scores(scores: Sequence[float], weighting: str = "normalize",
                        temperature: float = 1.0) -> list[float]:
    """The composition weights of the chosen adapters' scores (see the module doc)."""
    if weighting not in WEIGHTINGS:
        raise AdapterError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not scores:
        return []
    if weighting == "softmax":
        if not (math.isfinite(temperature) and temperature > 0):
            raise AdapterError(f"temperature must be a finite number > 0, got {temperature!r}")
        top = max(scores)
        e = [math.exp((s - top) / temperature) for s in scores]
        return [x / sum(e) for x in e]
    clipped = [max(float(s), 0.0) for s in scores]
    total = sum(clipped)
    return [s / total for s in clipped] if total > 0 else [1.0 / len(scores)] * len(scores)


def _get(record: Any, key: str, default: Any = None) -> Any:
    if isinstance(record, dict):
        return record.get(key, default)
    return getattr(record, key, default)


def _reason(record: Any, query: str) -> str:
    """Why a hit was chosen: its score, what the search says matched (``why``), its method,
    base model and tasks."""
    meta = _get(record, "metadata") or {}
    parts = [f"score {float(_get(record, 'score', 0.0)):.4f} for {query!r}"]
    why = _get(record, "why")
    if isinstance(why, dict) and why:
        parts.append(", ".join(f"{k} {v}" for k, v in why.items()))
    elif why:
        parts.append(str(why))
    if isinstance(meta, dict):
        adapter, card = meta.get("adapter") or {}, meta.get("card") or {}
        what = [str(x) for x in (adapter.get("method"), card.get("base_model") or adapter.get("base_model"))
                if x]
        what += [f"task {t}" for t in (card.get("tasks") or [])[:2]]
        if what:
            parts.append(", ".join(what))
    return "; ".join(parts)


def _adapter_name(kit: AdapterKit, repo_id: str, commit: str) -> str:
    base = "hub_" + re.sub(r"[^A-Za-z0-9_\-]", "_", repo_id.replace("/", "__"))
    return base if base not in kit.names else f"{base}_{commit[:8]}"


def _default_search() -> Search:
    try:
        from .search import search
    except ImportError:
        raise HubClientError("retrieval needs the hub search client (adapterkit.io.hub.search), "
                             "which this installation lacks") from None
    return search


def _pick(kit: AdapterKit, client: HubClient, hit: Any, mode: str,
          options: dict[str, Any]) -> tuple[str, str, str]:
    """(name, revision, commit) of a hit loaded onto the kit; raises with the reason to skip it."""
    repo_id = str(_get(hit, "repo_id"))
    revision = str(_get(hit, "revision") or "main")
    pinned = _get(hit, "commit") or revision  # the commit the search indexed, when it says
    commit = str(client.info(repo_id, pinned)["sha"])  # RepoNotFound for a repo the token can't read
    name = _adapter_name(kit, repo_id, commit)
    if name in kit.names:
        return name, revision, commit  # this commit was retrieved before: reuse it
    kit.load(f"hub://{repo_id}@{commit}", name=name, **options)
    if mode == "average" and kit.record(name).spec.kind is not MethodKind.WEIGHT_DELTA:
        kind = kit.record(name).spec.name
        kit.remove(name)
        raise AdapterError(f"a {kind} adapter has no weight delta to average (use mode='stack')")
    return name, revision, commit


def retrieve(kit: AdapterKit, query: str, k: int = 3, *, mode: str = "average",
             weighting: str = "normalize", temperature: float = 1.0, endpoint: str | None = None,
             token: str | None = None, cache_dir: str | os.PathLike | None = None,
             search: Search | None = None, candidates: int | None = None,
             **filters: Any) -> Retrieval:
    """See the module doc. ``search`` (default: the hub's search client) is called as
    ``search(query, endpoint=, token=, compatible_with=kit.model, limit=candidates, **filters)``
    and returns records with ``repo_id``, ``score`` and ``metadata``; ``candidates`` (default
    ``4 k``) bounds how many hits are tried."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AdapterError(f"k must be an integer >= 1, got {k!r}")
    if mode not in MODES:
        raise AdapterError(f"mode must be one of {MODES}, got {mode!r}")
    weights_from_scores([1.0], weighting, temperature)  # bad options fail before any request
    client = HubClient(endpoint, token, cache_dir)
    hits = (search or _default_search())(query, endpoint=client.endpoint, token=client.http.token,
                                         compatible_with=kit.model, limit=candidates or 4 * k, **filters)
    options = {"endpoint": client.endpoint, "token": client.http.token, "cache_dir": client.cache.root}
    picked: list[tuple[Any, str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    before = set(kit.names)
    try:
        for hit in hits:
            if len(picked) == k:
                break
            try:
                picked.append((hit, *_pick(kit, client, hit, mode, options)))
            except RepoNotFoundError:
                skipped.append((str(_get(hit, "repo_id")), "not readable with this token"))
            except AdapterError as exc:  # another base, a method that cannot be averaged
                skipped.append((str(_get(hit, "repo_id")), str(exc).splitlines()[0][:300]))
        if not picked:
            raise AdapterError(f"retrieve {query!r}: no compatible adapter this token can read was "
                               f"found ({len(skipped)} hit(s) skipped: {skipped[:3]})")
        scores = [float(_get(h, "score", 0.0)) for h, *_ in picked]
        weights = weights_from_scores(scores, weighting, temperature)
        names = [name for _, name, _, _ in picked]
        comp: Block | str = Average(*names, weights=weights) if mode == "average" else \
            Stack(*(Average(n, weights=[w]) for n, w in zip(names, weights)))
        kit.activate(comp)
    except BaseException:
        for name in set(kit.names) - before:
            kit.remove(name)
        raise
    chosen = [Choice(str(_get(h, "repo_id")), rev, commit, s, w, name, _reason(h, query))
              for (h, name, rev, commit), s, w in zip(picked, scores, weights)]
    return Retrieval(query, mode, weighting, comp, chosen, skipped)
