"""Search over the hub's repos: full text, semantic, hybrid, filters and base-model fit.

The service (what routes, pages and retrieval call)::

    search_repos(hub: Hub, caller: Caller | None, query: str | None = None, *,
                 mode: str = "text",            # "text" | "semantic" | "hybrid"
                 author: str | None = None,     # owner (user or organisation)
                 tags: Sequence[str] = (),      # README and derived tags, all required
                 method=None, task=None, language=None, license=None,
                 model_type=None, base_model=None,   # facets: the tag "key:value"
                 compatible_with: dict | None = None,  # a model fingerprint (see compat)
                 sort: str = "relevance",       # relevance | downloads | recency | createdAt | name
                 limit: int = 20, offset: int = 0) -> list[SearchHit]

``SearchHit(repo="owner/name", repo_id=int, score=float, metadata=dict, why=dict)``. Only repos
the caller may read are considered (private repos of accounts it has a role on, through a token
not limited to another organisation); a deleted repo's document goes with it. Without a query it
lists in ``sort`` order (name by default). ``mode="semantic"`` without the ``search`` extra
raises ``HubError`` 501 ``SemanticSearchUnavailable``; text search needs nothing extra.

Documents are written by :func:`index_commit` after each commit to ``main`` (full text: SQLite
FTS5 or PostgreSQL ``tsvector``; the MiniLM embedding of "title; description; tags; base; task;
language", stamped with its model and version); :func:`reindex` rebuilds them all.
"""

from .compat import fits, misfits
from .embed import SemanticUnavailable
from .indexer import count_download, index_commit, reindex
from .query import FACETS, MODES, SearchHit
from .service import search_repos

__all__ = ["FACETS", "MODES", "SearchHit", "SemanticUnavailable", "count_download", "fits", "index_commit",
           "misfits", "reindex", "search_repos"]
