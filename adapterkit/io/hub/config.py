"""Where the hub client finds its endpoint and token.

The endpoint: the ``endpoint=`` argument, else ``$ADAPTERKIT_HUB``, else the one ``adapterkit
login`` saved last. The token: ``token=``, else ``$ADAPTERKIT_HUB_TOKEN``, else the token that
``adapterkit login`` saved for that endpoint (in ``~/.config/adapterkit/hub.json``, mode 0600,
or ``$ADAPTERKIT_HUB_CONFIG``), else none (anonymous: public repos only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import HubClientError


def config_path() -> Path:
    env = os.environ.get("ADAPTERKIT_HUB_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "adapterkit" / "hub.json"


def _load() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise HubClientError(f"{path} is not valid JSON: fix or delete it, then run "
                             "'adapterkit login'") from None
    return data if isinstance(data, dict) else {}


def endpoint_for(endpoint: str | None) -> str:
    chosen = endpoint or os.environ.get("ADAPTERKIT_HUB") or _load().get("default")
    if not chosen:
        raise HubClientError("no hub endpoint: pass endpoint='http://host:port', set $ADAPTERKIT_HUB, "
                             "or run 'adapterkit login --endpoint URL'")
    if not str(chosen).startswith(("http://", "https://")):
        raise HubClientError(f"bad hub endpoint {chosen!r}: use an http:// or https:// URL")
    return str(chosen).rstrip("/")


def token_for(endpoint: str, token: str | None) -> str | None:
    if token:
        return token
    env = os.environ.get("ADAPTERKIT_HUB_TOKEN")
    if env:
        return env
    saved = _load().get("tokens", {}).get(endpoint)
    return str(saved) if saved else None


def save_login(endpoint: str, token: str) -> Path:
    """Remember ``token`` for ``endpoint`` and make it the default endpoint."""
    data = _load()
    data.setdefault("tokens", {})[endpoint] = token
    data["default"] = endpoint
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path
