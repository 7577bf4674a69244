"""The hub's FastAPI application: routes, error answers and body size limits.

Every error answer carries ``X-Error-Code`` and ``X-Error-Message`` and a JSON ``{"error": ...}``
body; request bodies larger than the server's limits are refused with 413 before they are read.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.version import __version__
from .errors import HubError
from .routes import artifacts, files, info, manage, search, upload
from .settings import Hub
from .web import missing_page, wants_page
from .web import router as web_router

log = logging.getLogger("adapterkit.hub")
_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
          405: "MethodNotAllowed", 409: "Conflict", 413: "PayloadTooLarge", 415: "UnsupportedMediaType",
          416: "RangeNotSatisfiable", 422: "BadRequest", 500: "InternalError"}


def _header_text(text: str) -> str:
    return " ".join(text.encode("ascii", "replace").decode().split())[:1000]


def error_response(status: int, code: str, message: str, header: str | None = None,
                   commit: str | None = None) -> JSONResponse:
    headers = {"X-Error-Code": code, "X-Error-Message": _header_text(header or message)}
    if commit:
        headers["X-Repo-Commit"] = commit
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON: " + str(err.get("ctx", {}).get("error", ""))
        parts.append(f"{where}: {err.get('msg')}")
    return "bad request: " + "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def _hub_error(_request: Request, exc: HubError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.header, exc.commit)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "BadRequest", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            if wants_page(request):  # a browser on a path that is no page: the HTML 404
                return await run_in_threadpool(missing_page, request)
            message = f"no route for {request.method} {request.url.path}"
        return error_response(exc.status_code, _CODES.get(exc.status_code, "Error"), message)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "InternalError", f"internal error ({type(exc).__name__}); "
                              "the server log has the details")


class _Counted:
    """The receive and send of one request whose body may not pass ``limit`` bytes: past it, the
    app reads a disconnect and whatever it answers is dropped (BodyLimit answers 413 instead)."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.seen, self.exceeded = 0, False

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if not self.exceeded:
            await self._send(message)


class BodyLimit:
    """Refuses a declared ``Content-Length`` over the limit at once, and stops a streamed body
    once it passes the limit (LFS uploads get the per-file limit, other requests the request one)."""

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app, self.hub = app, hub

    @staticmethod
    def _refusal(scope: Scope, limit: int) -> tuple[int, str, str] | None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is None:
            return None
        if not declared.isdigit():
            return 400, "BadRequest", f"bad Content-Length {declared[:40]!r}"
        if int(declared) > limit:
            return 413, "PayloadTooLarge", (f"the body has {int(declared)} bytes; this endpoint takes at "
                                            f"most {limit}")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.hub.settings
        limit = s.max_file_bytes if scope["path"].startswith("/api/lfs/upload/") else s.max_request_bytes
        problem = self._refusal(scope, limit)
        if problem:
            await error_response(*problem)(scope, receive, send)
            return
        counted = _Counted(receive, send, limit)
        try:
            await self.app(scope, counted.receive, counted.send)
        except Exception:
            if not counted.exceeded:
                raise
        if counted.exceeded:
            await error_response(413, "PayloadTooLarge", f"the body passed this endpoint's limit of "
                                 f"{limit} bytes")(scope, receive, send)


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(title="adapterkit hub", version=__version__,
                  description="A self-hosted adapter hub that speaks the Hugging Face Hub protocol.")
    app.state.hub = hub
    install_handlers(app)
    for module in (info, search, files, upload, manage, artifacts):
        app.include_router(module.router)

    @app.get("/api/health", tags=["info"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    app.include_router(web_router)  # the pages last: every API route above wins over /{owner}/{name}
    app.add_middleware(BodyLimit, hub=hub)
    return app
