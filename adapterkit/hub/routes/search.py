"""Search routes: ``GET /api/models`` (the Hugging Face listing and search, with adapterkit's
fields and parameters) and ``POST /api/models/search`` (the same, with a model fingerprint for
"compatible with this model" in the body)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from ..catalog import SearchHit, search_repos
from ..db.models import Repo
from ..repos import resolve
from .common import CallerDep, HubDep, page_link
from .info import model_info

router = APIRouter()
PAGE = 1000
Text = Annotated[str | None, Query(max_length=200)]


def render(s: Session, hits: list[SearchHit], full: bool) -> list[dict[str, Any]]:
    out = []
    for hit in hits:
        repo = s.get(Repo, hit.repo_id)
        if repo is None:
            continue
        info = model_info(s, repo, resolve(s, repo, "main"), full=full)
        info["downloads"] = hit.metadata.get("downloads", 0)
        info.update(score=hit.score, metadata=hit.metadata, why=hit.why)
        out.append(info)
    return out


@router.get("/api/models", tags=["info", "search"])
def list_models(request: Request, hub: HubDep, caller: CallerDep,
                search: Annotated[str | None, Query(max_length=500)] = None, author: Text = None,
                filter: Annotated[list[str] | None, Query()] = None,
                sort: Annotated[str, Query(max_length=32)] = "relevance",
                limit: Annotated[int | None, Query(ge=1, le=10000)] = None, full: bool = False,
                cursor: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
                mode: Annotated[str, Query(max_length=16)] = "text", method: Text = None,
                task: Text = None, language: Text = None, license: Text = None,
                model_type: Text = None, base_model: Text = None) -> JSONResponse:
    """Repos the caller may read. ``search``: full text over the cards (and a part of the repo
    id, as on the Hugging Face Hub); ``mode`` text, semantic or hybrid; ``filter``: tags, all
    required (README tags and derived ones such as ``method:lora``, ``task:X``,
    ``weights:SHA``); facets ``method``, ``task``, ``language``, ``license``, ``model_type``,
    ``base_model``; ``sort`` relevance, downloads, recency (lastModified), createdAt or name.
    Each entry adds ``score``, ``metadata`` and ``why`` (its text and semantic ranks)."""
    size = limit or PAGE
    with hub.db.read() as s:
        hits = search_repos(hub, caller, search, mode=mode, author=author, tags=filter or [],
                            method=method, task=task, language=language, license=license,
                            model_type=model_type, base_model=base_model, sort=sort,
                            limit=size + (0 if limit else 1), offset=cursor)
        more = limit is None and len(hits) > size
        page = render(s, hits[:size], full)
    return JSONResponse(page, headers=page_link(request, cursor + size) if more else {})


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str | None = Field(None, max_length=500)
    mode: str = Field("hybrid", max_length=16)
    author: str | None = Field(None, max_length=200)
    filter: list[str] = Field(default_factory=list, max_length=64)
    method: str | None = Field(None, max_length=200)
    task: str | None = Field(None, max_length=200)
    language: str | None = Field(None, max_length=200)
    license: str | None = Field(None, max_length=200)
    model_type: str | None = Field(None, max_length=200)
    base_model: str | None = Field(None, max_length=200)
    compatible_with: dict[str, Any] | None = None
    sort: str = Field("relevance", max_length=32)
    limit: int = Field(20, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1 << 40)
    full: bool = False


@router.post("/api/models/search", tags=["search"])
def search_models(body: SearchBody, hub: HubDep, caller: CallerDep) -> list[dict[str, Any]]:
    """Search with a JSON body; ``compatible_with`` is a model fingerprint
    (``{"model_type": ..., "modules": {path: weight shape}}``): only adapters whose host modules
    and shapes fit that model are returned."""
    with hub.db.read() as s:
        hits = search_repos(hub, caller, body.query, mode=body.mode, author=body.author, tags=body.filter,
                            method=body.method, task=body.task, language=body.language,
                            license=body.license, model_type=body.model_type, base_model=body.base_model,
                            compatible_with=body.compatible_with, sort=body.sort, limit=body.limit,
                            offset=body.offset)
        return render(s, hits, body.full)
