"""The hub's pages: ``GET /`` (search with filters) and ``GET /{owner}/{name}`` (a repo), plus
the stylesheet at ``/-/static/hub.css``.

This router is included after the API's, so every API route (``/api/...``,
``/{owner}/{name}/resolve/...``, ``/{owner}/{name}.git/...``) wins; the repo page refuses the
owner ``api``, so an unknown ``/api/x`` is still answered as the API answers (JSON 404). The
pages only read: they search and show what the visitor may read, as the API would show it to
the same token.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..accounts import Caller
from ..catalog import SearchHit, search_repos
from ..catalog.query import conditions
from ..db.models import Repo, SearchDoc, SearchTag
from ..errors import BadName, HubError, RepoNotFound, RevisionNotFound
from ..routes.artifacts import similar
from ..routes.common import HubDep, base_url
from ..settings import Hub
from .login import Visitor, visitor
from .render import page
from .view import repo_view

router = APIRouter(include_in_schema=False)
FIELDS = ("q", "mode", "method", "task", "language", "license", "owner", "model_type", "sort")
FACETS = ("method", "task", "language", "license", "model_type")
DEFAULTS = {"mode": "hybrid", "sort": "relevance"}
PER_PAGE = 20
MAX_PAGE = 500
MAX_OPTIONS = 100


@dataclass
class SearchForm:
    values: dict[str, str]
    page: int

    @classmethod
    def read(cls, params: QueryParams) -> SearchForm:
        values = {k: (params.get(k) or DEFAULTS.get(k, "")).strip()[:200] for k in FIELDS}
        raw = params.get("page", "1")
        number = int(raw) if raw.isdigit() else 1
        return cls(values, min(max(number, 1), MAX_PAGE))

    def link(self, **changes: Any) -> str:
        """The query string of this search with ``changes``."""
        values = {**self.values, "page": str(self.page), **{k: str(v) for k, v in changes.items()}}
        kept = {k: v for k, v in values.items()
                if v and v != DEFAULTS.get(k) and not (k == "page" and v == "1")}
        return "?" + str(QueryParams(kept)) if kept else "?"


def run_search(hub: Hub, caller: Caller | None, form: SearchForm) -> list[SearchHit]:
    v = {k: value or None for k, value in form.values.items()}
    return search_repos(hub, caller, v["q"], mode=form.values["mode"], author=v["owner"], method=v["method"],
                        task=v["task"], language=v["language"], license=v["license"],
                        model_type=v["model_type"], sort=form.values["sort"], limit=PER_PAGE + 1,
                        offset=(form.page - 1) * PER_PAGE)


def facet_options(hub: Hub, caller: Caller | None) -> dict[str, list[tuple[str, int]]]:
    """Each facet's values among the repos the visitor may read, with how many have it."""
    out: dict[str, list[tuple[str, int]]] = {}
    with hub.db.read() as s:
        readable, _ = conditions(s, caller, None, (), None)
        for key in FACETS:
            q = (select(SearchTag.tag, func.count()).select_from(SearchTag)
                 .join(SearchDoc, SearchDoc.repo_id == SearchTag.repo_id)
                 .join(Repo, Repo.id == SearchTag.repo_id)
                 .where(SearchTag.tag.startswith(f"{key}:", autoescape=True), *readable)
                 .group_by(SearchTag.tag).order_by(func.count().desc(), SearchTag.tag).limit(MAX_OPTIONS))
            out[key] = [(tag.split(":", 1)[1], n) for tag, n in s.execute(q).tuples()]
    return out


def _render(request: Request, hub: Hub, who: Visitor, template: str, status: int = 200,
            **context: Any) -> HTMLResponse:
    html = page(template, request=request, visitor=who, endpoint=base_url(request), **context)
    return HTMLResponse(html, status_code=status)


def not_found(request: Request, hub: Hub, who: Visitor, message: str) -> HTMLResponse:
    return _render(request, hub, who, "not_found.html", status=404, title="Not found", message=message)


def wants_page(request: Request) -> bool:
    """A browser asking for a page (not an API client, and not under ``/api/``)."""
    return (request.method == "GET" and "text/html" in request.headers.get("accept", "")
            and not request.url.path.startswith("/api/"))


def missing_page(request: Request) -> HTMLResponse:
    """The HTML 404 for a path that is no page."""
    hub: Hub = request.app.state.hub
    return not_found(request, hub, visitor(request, hub), f"There is no page at {request.url.path[:300]}.")


def similar_to(hub: Hub, caller: Caller | None, owner: str, name: str, commit: str) -> list[dict[str, Any]]:
    """The readable adapters closest by weight embedding (none for an adapter without one)."""
    try:
        found: list[dict[str, Any]] = similar(owner, name, hub, caller, revision=commit, limit=5)["similar"]
    except HubError:
        return []
    return found


@router.get("/", response_class=HTMLResponse)
def search_page(request: Request, hub: HubDep) -> HTMLResponse:
    """Search over the repos the visitor may read: ``q``, ``mode`` (hybrid, text, semantic),
    ``method``, ``task``, ``language``, ``license``, ``owner``, ``model_type``, ``sort``, ``page``."""
    who = visitor(request, hub)
    form = SearchForm.read(request.query_params)
    notice, error, status, hits = who.notice, None, 200, []
    try:
        try:
            hits = run_search(hub, who.caller, form)
        except HubError as exc:
            if exc.code != "SemanticSearchUnavailable":
                raise
            notice = "Semantic search is not installed on this hub (adapterkit[search]); this is text search."
            form.values["mode"] = "text"
            hits = run_search(hub, who.caller, form)
    except HubError as exc:
        error, status = exc.message, exc.status
    return _render(request, hub, who, "search.html", status=status, title="Search adapters", form=form,
                   hits=hits[:PER_PAGE], per_page=PER_PAGE, more=len(hits) > PER_PAGE,
                   facets=facet_options(hub, who.caller), notice=notice, error=error)


@router.get("/-/static/hub.css")
def stylesheet() -> Response:
    css = resources.files("adapterkit.hub.web").joinpath("static/hub.css").read_text()
    return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


@router.get("/{owner}/{name}", response_class=HTMLResponse)
def repo_page(owner: str, name: str, request: Request, hub: HubDep, rev: str = "main") -> HTMLResponse:
    """A repo at a branch, tag or commit (``rev``, default ``main``)."""
    if owner == "api":
        raise StarletteHTTPException(404)
    who = visitor(request, hub)
    repo_id = f"{owner}/{name}"
    try:
        with hub.db.read() as s:
            view = repo_view(s, hub, repo_id, who.caller, rev[:200])
            return _render(request, hub, who, "repo.html", title=repo_id, view=view,
                           similar=similar_to(hub, who.caller, owner, name, view.commit.id))
    except (RepoNotFound, BadName):
        hint = "" if who.caller else " If it is private, log in with a token of one of its members."
        return not_found(request, hub, who, f"There is no repo {repo_id} here that you may read.{hint}")
    except RevisionNotFound:
        return not_found(request, hub, who, f"{repo_id} has no branch, tag or commit {rev[:200]!r}.")
