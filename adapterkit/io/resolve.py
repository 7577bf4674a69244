"""One resolver from a source string to a local adapter directory.

A source is a local directory (``str`` or ``os.PathLike``) or a URL whose scheme has a
registered resolver (``hub://owner/name@rev``, once the hub client is installed). Every loader
(``kit.load``, the CLI, the server) goes through :func:`resolve`, so a new scheme is one
:func:`register_scheme` call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LoadError

#: a resolver turns the part after ``scheme://`` (plus keyword options) into a local directory
Resolver = Callable[..., Path]
_SCHEMES: dict[str, Resolver] = {}
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<rest>.*)", re.S)


def register_scheme(scheme: str, resolver: Resolver) -> None:
    """Make ``scheme://...`` sources resolve through ``resolver(rest, **options)``."""
    _SCHEMES[scheme] = resolver


def schemes() -> list[str]:
    return sorted(_SCHEMES)


def resolve(source: str | os.PathLike, **options: Any) -> Path:
    """The local directory for ``source``; raises ``LoadError`` naming the source and what is
    allowed when it is neither an existing directory nor a URL of a known scheme."""
    if not isinstance(source, (str, os.PathLike)):
        raise LoadError(f"an adapter source is a directory or a URL string, got {type(source).__name__}")
    text = os.fspath(source)
    match = _URL.fullmatch(text) if isinstance(text, str) else None
    if match:
        scheme = match.group("scheme")
        resolver = _SCHEMES.get(scheme)
        if resolver is None:
            known = ", ".join(f"{s}://" for s in schemes()) or "none"
            raise LoadError(f"{text}: unknown source scheme {scheme!r}; known schemes: {known}, "
                            "or a local directory")
        return resolver(match.group("rest"), **options)
    if options:
        raise LoadError(f"{text}: options {sorted(options)} apply to URL sources only")
    path = Path(text)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise LoadError(f"no adapter directory at {path} (it {what}): a source is a directory "
                        "holding adapter_config.json, or a URL (known schemes: "
                        f"{', '.join(f'{s}://' for s in schemes()) or 'none'})")
    return path
