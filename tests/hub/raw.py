"""Plain HTTP requests to a hub (for what the stock clients never send)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class Headers(dict[str, str]):
    """Response headers, looked up without regard to case."""

    def __init__(self, items: Any) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer itself is returned (as an HTTPError)


_NOT_FOLLOWING = urllib.request.build_opener(_NoRedirect)


def raw(hub: Any, method: str, path: str, *, token: str | None = None, body: bytes | None = None,
        json_body: Any = None, headers: dict[str, str] | None = None, follow: bool = True) -> Raw:
    """One request; ``follow=False`` answers a redirect itself instead of following it."""
    extra = dict(headers or {})
    if json_body is not None:
        body, extra["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    if token:
        extra["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(hub.url + path, data=body, method=method, headers=extra)
    try:
        with (urllib.request.urlopen if follow else _NOT_FOLLOWING.open)(req, timeout=60) as resp:
            return Raw(resp.status, Headers(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        return Raw(err.code, Headers(err.headers.items()), err.read())
