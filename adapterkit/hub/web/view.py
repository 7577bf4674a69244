"""What a repo page shows, read in one database session: the card, files with sizes and
SHA-256 hashes, commits, refs, the metadata extracted at upload, the download count and the base
models known to fit.

"Compatible base models" is structural, like the search filter: a base model is listed when some
adapter the visitor may read was made for it (its card names it) and that adapter's host modules
include every host this adapter needs, with the same weight shapes. The adapter's own needs
(host path -> weight shape) are listed too, for a model the hub has never seen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..accounts import Caller
from ..catalog import fits
from ..catalog.indexer import build
from ..catalog.query import conditions
from ..db.models import Commit, Ref, Repo, SearchDoc
from ..repos import files_of, get_repo, history, resolve
from ..settings import Hub
from .render import CARD_BYTES, card_body, markdown_html

MAX_COMMITS = 50
MAX_HASHES = 2000  # distinct host sets compared for "compatible base models"
MAX_DOCS = 5000


@dataclass
class FileRow:
    path: str
    size: int
    sha256: str
    lfs: bool


@dataclass
class RepoView:
    repo_id: str
    private: bool
    revision: str
    commit: Commit
    card_html: str
    files: list[FileRow]
    commits: list[Commit]
    refs: list[tuple[str, str, str]]  # (kind, name, commit id)
    meta: dict[str, Any]
    downloads: int
    facts: list[tuple[str, str]] = field(default_factory=list)
    bases: list[tuple[str, int]] = field(default_factory=list)  # (base model, adapters naming it)
    hosts: list[tuple[str, list[int] | None]] = field(default_factory=list)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]


def _join(*cols: Any) -> Any:
    return select(*cols).select_from(Repo).join(SearchDoc, SearchDoc.repo_id == Repo.id)


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def facts(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The extracted metadata as (label, text) rows, leaving out what is empty."""
    adapter, card = meta.get("adapter") or {}, meta.get("card") or {}
    rows = [("method", adapter.get("method")), ("rank", adapter.get("rank")),
            ("format", adapter.get("format")), ("sites", adapter.get("sites")),
            ("base model", card.get("base_model") or adapter.get("base_model")),
            ("base model_type", adapter.get("base_model_type")),
            ("base fingerprint", adapter.get("base_fingerprint")), ("heads", adapter.get("heads")),
            ("tasks", card.get("tasks")), ("language", card.get("language")),
            ("licence", card.get("license")), ("tags", card.get("tags")),
            ("library", card.get("library_name")), ("parameters", meta.get("parameters")),
            ("files", meta.get("files")), ("bytes", meta.get("bytes"))]
    for path, w in sorted((meta.get("weights") or {}).items()):
        if w.get("payload_sha256"):
            rows.append(("payload sha256", f"{path}: {w['payload_sha256']}"))
    for key in ("card_error", "expunged"):
        if meta.get(key):
            rows.append((key.replace("_", " "), meta[key]))
    return [(label, _text(v)) for label, v in rows if v not in (None, "", [], ())]


def known_bases(s: Session, caller: Caller | None, requires: dict[str, Any] | None) -> list[tuple[str, int]]:
    """Base models named by readable adapters whose hosts cover ``requires`` (most named first)."""
    if not requires:
        return []
    readable, _ = conditions(s, caller, None, (), None)
    reps = s.execute(_join(SearchDoc.requires_hash, func.min(Repo.id))
                     .where(SearchDoc.requires_hash.is_not(None), *readable)
                     .group_by(SearchDoc.requires_hash).limit(MAX_HASHES)).tuples().all()
    fitting = []
    for requires_hash, repo_id in reps:
        theirs = s.scalar(select(SearchDoc.requires).where(SearchDoc.repo_id == repo_id)) or {}
        if fits({h: list(v) for h, v in theirs.items() if v is not None}, requires):
            fitting.append(requires_hash)
    if not fitting:
        return []
    named: Counter[str] = Counter()
    for (meta,) in s.execute(_join(SearchDoc.meta).where(SearchDoc.requires_hash.in_(fitting), *readable)
                             .limit(MAX_DOCS)).tuples():
        base = (meta or {}).get("base_model")
        if base:
            named[str(base)] += 1
    return sorted(named.items(), key=lambda kv: (-kv[1], kv[0]))


def read_card(hub: Hub, files: dict[str, Any]) -> str:
    readme = files.get("README.md")
    if readme is None:
        return ""
    with hub.store.open(readme.blob) as f:
        text = f.read(CARD_BYTES).decode("utf-8", "replace")
    return markdown_html(card_body(text))


def repo_view(s: Session, hub: Hub, repo_id: str, caller: Caller | None, revision: str) -> RepoView:
    """The page's data; raises RepoNotFound (also for a private repo the caller may not read),
    RevisionNotFound or BadName as the API does."""
    repo = get_repo(s, repo_id, caller)
    commit = resolve(s, repo, revision)
    files = files_of(s, commit.id)
    refs = [(r.kind, r.name, r.commit_id)
            for r in s.scalars(select(Ref).where(Ref.repo_id == repo.id).order_by(Ref.kind, Ref.name))]
    doc = s.get(SearchDoc, repo.id)
    requires = build(hub, repo, commit, {p: (f.blob, f.size) for p, f in files.items()}).requires
    meta = commit.meta or {}
    return RepoView(
        repo_id=repo.full_name, private=repo.private, revision=revision, commit=commit,
        card_html=read_card(hub, files),
        files=[FileRow(f.path, f.size, f.blob, f.lfs) for f in files.values()],
        commits=history(s, commit, limit=MAX_COMMITS), refs=refs, meta=meta,
        downloads=doc.downloads if doc is not None else 0, facts=facts(meta),
        bases=known_bases(s, caller, requires), hosts=sorted((requires or {}).items()))
