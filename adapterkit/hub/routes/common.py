"""What every route uses: the hub, the caller, the base URL and JSON helpers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..accounts import Caller
from ..db.models import as_utc
from ..settings import Hub

bearer = HTTPBearer(auto_error=False, description="an adapterkit hub token (akh_...)")


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_caller(request: Request,
               _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller | None:
    """The authenticated caller, checked on every request (None when anonymous); see
    :class:`~adapterkit.hub.accounts.CallerCache`."""
    return get_hub(request).callers.lookup(request.headers.get("authorization"))


HubDep = Annotated[Hub, Depends(get_hub)]
CallerDep = Annotated[Caller | None, Depends(get_caller)]


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def remote(request: Request) -> str | None:
    return request.client.host if request.client else None


def iso(value: dt.datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def actor(caller: Caller | None) -> str:
    return caller.name if caller else "anonymous"


def page_link(request: Request, cursor: int) -> dict[str, Any]:
    """A ``Link: <...>; rel="next"`` header for the next page of a listing."""
    url = request.url.include_query_params(cursor=str(cursor))
    return {"Link": f'<{url}>; rel="next"'}
