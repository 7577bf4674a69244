"""Read access to hub adapters, per caller: an adapter the caller's token cannot read is never
pulled, listed, composed or unloaded.

- ``/v1/load_lora_adapter`` with a ``hub://owner/name@rev`` path pulls it with the caller's
  bearer token (the ``Authorization`` header; the ``openai`` client sends its ``api_key``
  there), never with a token of the server's own (``$ADAPTERKIT_HUB_TOKEN`` or a saved login,
  which may read more). The hub's endpoint is the server's (``$ADAPTERKIT_HUB`` or the login's).
- Every adapter registered from a ``hub://`` source, at startup or at run time, remembers its
  repo. A request naming one (``model``, ``adapters``, ``merged_adapters``), ``/v1/models`` and
  the unload route ask the hub, with the caller's token, whether that token may read the repo;
  a caller who may not gets the answer of a name that does not exist (404, vLLM's error
  shape), and the server's state is unchanged. Answers are kept ``ttl_s`` seconds per (token,
  repo), so a token revoked or a repo made private or purged is refused within that time.
- A token the hub does not know (e.g. the ``api_key`` of a client that needs none) reads what
  an anonymous caller reads: public repos.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..io.hub.client import HubClient, parse_source
from ..io.hub.errors import HubAuthError, HubClientError, RepoNotFoundError
from .protocol import ServeError

SCHEME = "hub://"
TTL_S = 30.0
MAX_KEPT = 10_000


def bearer(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, else None."""
    scheme, _, value = str(headers.get("authorization") or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def hub_origin(source: object) -> tuple[str, str] | None:
    """(repo id, revision) of a ``hub://`` source, else None; a malformed one raises."""
    text = str(source)
    return parse_source(text[len(SCHEME):]) if text.startswith(SCHEME) else None


def _client(token: str | None) -> HubClient:
    client = HubClient()
    client.http.token = token  # the caller's token alone, never the server's own
    return client


def _as_caller(token: str | None, call: Any) -> Any:
    """``call(client)`` with the caller's token; a token the hub does not know reads as none."""
    try:
        return call(_client(token))
    except HubAuthError:
        if token is None:
            raise
        return call(_client(None))


class HubAccess:
    """Pulls for callers and answers whether a caller may read a repo (answers kept briefly)."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[tuple[str, str], tuple[float, bool]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str | None, repo: str) -> tuple[str, str]:
        return hashlib.sha256((token or "").encode()).hexdigest(), repo

    def _remember(self, token: str | None, repo: str, ok: bool) -> None:
        with self._lock:
            if len(self._seen) >= MAX_KEPT:
                self._seen.clear()
            self._seen[self._key(token, repo)] = (time.monotonic(), ok)

    def pull(self, source: str, token: str | None, param: str = "lora_path") -> Path:
        """The local directory of a ``hub://`` source, pulled with ``token``."""
        origin = hub_origin(source)
        assert origin is not None
        repo, revision = origin
        try:
            path = _as_caller(token, lambda c: c.pull(repo, revision))
        except RepoNotFoundError:
            self._remember(token, repo, False)
            raise ServeError(404, f"hub repo {repo} does not exist or this token cannot read it "
                             "(send a hub token that can as 'Authorization: Bearer ...')",
                             "NotFoundError", param) from None
        self._remember(token, repo, True)
        return Path(path)

    def can_read(self, repo: str, revision: str, token: str | None) -> bool:
        with self._lock:
            hit = self._seen.get(self._key(token, repo))
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        try:
            _as_caller(token, lambda c: c.info(repo, revision))
            ok = True
        except (RepoNotFoundError, HubAuthError):
            ok = False
        except HubClientError as exc:  # the hub is unreachable or failing: refuse, do not guess
            raise ServeError(502, f"could not check read access to hub repo {repo}: {exc}",
                             "BadGatewayError") from None
        self._remember(token, repo, ok)
        return ok

    def readable(self, regs: Iterable[Any], token: str | None) -> list[Any]:
        """The registrations among ``regs`` that ``token`` may use (local ones always)."""
        return [r for r in regs if r.origin is None or self.can_read(r.origin[0], r.origin[1], token)]


def requested_names(req: Any) -> list[str]:
    """The adapter names a request gives: ``model``, ``adapters[].name``, ``merged_adapters.ids``."""
    names = [req.model] if isinstance(getattr(req, "model", None), str) else []
    names += [a.name for a in getattr(req, "adapters", None) or [] if isinstance(a.name, str)]
    merged = getattr(req, "merged_adapters", None)
    ids = merged.get("ids") if isinstance(merged, dict) else None
    names += [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
    return names
