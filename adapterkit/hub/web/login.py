"""Token login for the pages: ``/login`` checks a hub token and keeps it in an HttpOnly cookie;
``/logout`` drops it.

The cookie is read by the pages only, which never change anything: the HTTP API (uploads,
deletions, settings, downloads) authenticates by the ``Authorization`` header alone, so a page on
another site cannot make a browser act with the cookie (no CSRF path). A login form posted from
another origin is refused (the ``Origin`` header), and the page to return to must be a path of
this hub. A revoked or expired token in the cookie reads as logged out, with a notice.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..accounts import Caller, authenticate
from ..db.models import Token, as_utc, now
from ..errors import HubError, Unauthorized
from ..settings import Hub
from .render import page

COOKIE = "akh_session"
MAX_AGE = 30 * 24 * 3600
router = APIRouter(include_in_schema=False)


@dataclass
class Visitor:
    """Who is looking at a page: the caller (None when anonymous) and a notice to show."""

    caller: Caller | None
    notice: str | None = None

    @property
    def name(self) -> str | None:
        return self.caller.name if self.caller else None


def visitor(request: Request, hub: Hub) -> Visitor:
    """The page's caller, from an ``Authorization`` header or else the login cookie."""
    header = request.headers.get("authorization")
    cookie = request.cookies.get(COOKIE)
    if not header and not cookie:
        return Visitor(None)
    with hub.db.read() as s:
        try:
            return Visitor(authenticate(s, header or f"Bearer {cookie}"))
        except Unauthorized as exc:
            why = exc.message.split(": ", 1)[-1]
            return Visitor(None, f"You are not logged in: {why}. Log in again with a valid token.")


def safe_next(target: str | None) -> str:
    """A path of this hub to return to (anything else, such as ``//evil`` or a URL, gives ``/``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 or ord(c) == 127 for c in target):  # browsers drop tabs: "/\t/x" is "//x"
        return "/"
    parts = urllib.parse.urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.rstrip("/") == str(request.base_url).rstrip("/")


def login_page(request: Request, *, next_path: str = "/", error: str | None = None,
               status: int = 200) -> HTMLResponse:
    html = page("login.html", request=request, visitor=Visitor(None), next_path=safe_next(next_path),
                error=error, title="Log in")
    return HTMLResponse(html, status_code=status)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    """The login form: a hub token (``adapterkit hub token create`` prints one)."""
    return login_page(request, next_path=next[:2000])


def _check(hub: Hub, text: str) -> tuple[Caller, dt.datetime | None]:
    with hub.db.read() as s:
        caller = authenticate(s, f"Bearer {text}")
        assert caller is not None
        token = s.get(Token, caller.token_id)
        return caller, as_utc(token.expires_at) if token else None


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the posted token; set the HttpOnly cookie and go back to ``next``."""
    if not same_origin(request):
        return login_page(request, error="This login form was posted from another site.", status=403)
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    text = (form.get("token") or [""])[0].strip()
    next_path = safe_next((form.get("next") or ["/"])[0])
    if not text:
        return login_page(request, next_path=next_path, error="Paste a token to log in.", status=400)
    hub: Hub = request.app.state.hub
    try:
        _caller, expires = await run_in_threadpool(_check, hub, text)
    except HubError as exc:
        why = exc.message.split(": ", 1)[-1]
        return login_page(request, next_path=next_path, error=f"That token does not work: {why}.",
                          status=401)
    age = MAX_AGE if expires is None else max(0, min(MAX_AGE, int((expires - now()).total_seconds())))
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(COOKIE, text, max_age=age, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout(request: Request) -> Response:
    """Drop the cookie and go to the search page."""
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return response
