"""A small HTTP client over ``urllib`` for the hub protocol (no dependency beyond the standard
library): JSON requests, streamed downloads, and errors classified by ``X-Error-Code``."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ...core.version import __version__
from .errors import HubClientError, error_for

TIMEOUT_S = 60.0
CHUNK = 1 << 20


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HubClientError(f"the hub answered {self.status} with a body that is not JSON: "
                                 f"{self.body[:120]!r}", self.status) from None


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class HubHTTP:
    def __init__(self, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token

    def _headers(self, extra: dict[str, str] | None, auth: bool) -> dict[str, str]:
        headers = {"User-Agent": f"adapterkit/{__version__}", **(extra or {})}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def open(self, method: str, url: str, *, body: bytes | BinaryIO | None = None,
             headers: dict[str, str] | None = None, auth: bool = True) -> Any:
        """The raw ``urllib`` response of a request that succeeded; an error answer raises the
        matching :class:`HubClientError`."""
        if not url.startswith(("http://", "https://")):
            url = self.endpoint + url
        req = urllib.request.Request(url, data=body, method=method, headers=self._headers(headers, auth))
        try:
            return urllib.request.urlopen(req, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as err:
            raise _error(err, method, url) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise HubClientError(f"cannot reach the hub at {self.endpoint} ({reason}); check the "
                                 "endpoint (endpoint= or $ADAPTERKIT_HUB)") from None

    def call(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
             content_type: str | None = None, auth: bool = True) -> Reply:
        headers = {}
        if json_body is not None:
            data, content_type = json.dumps(json_body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        with self.open(method, path, body=data, headers=headers, auth=auth) as resp:
            return Reply(resp.status, dict(resp.headers.items()), resp.read())

    def download(self, path: str, sink: Callable[[bytes], None]) -> dict[str, str]:
        """Stream a GET's body into ``sink`` in 1 MiB chunks; returns the answer's headers."""
        with self.open("GET", path) as resp:
            while chunk := resp.read(CHUNK):
                sink(chunk)
            return dict(resp.headers.items())


def _error(err: urllib.error.HTTPError, method: str, url: str) -> HubClientError:
    code = err.headers.get("X-Error-Code") if err.headers else None
    message = err.headers.get("X-Error-Message") if err.headers else None
    try:
        body = json.loads(err.read() or b"{}")
        detail = body.get("error") if isinstance(body, dict) else None
    except (ValueError, OSError):
        detail = None
    text = detail or message or err.reason
    return error_for(err.code, code, f"{method} {url}: {err.code} {code or err.reason}: {text}")
