"""Rendering the hub's pages: the Jinja2 templates of this package, a model card's markdown as
safe HTML, and the small formatting filters the templates use.

Jinja2 and markdown-it-py come with the ``hub`` extra and are imported on first use. Cards are
rendered with raw HTML disabled: a ``<script>`` or ``<img onerror=...>`` in a README is shown
as text, and links whose scheme is not safe (``javascript:``, ``vbscript:``, ``file:``) are not
made links (markdown-it's link validation).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
from typing import Any

from ..errors import HubError

CARD_BYTES = 1 << 20  # the most of a README the page renders


def _need(module: str) -> Any:
    """An optional module of the ``hub`` extra; without it the pages answer 501, saying so."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HubError(f"the hub's pages need {module}: install adapterkit[hub]", status=501,
                       code="PagesUnavailable") from None


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The templates' environment (autoescaping everything)."""
    jinja2 = _need("jinja2")
    env = jinja2.Environment(loader=jinja2.PackageLoader("adapterkit.hub.web", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(size=human_size, when=when, short=lambda sha, n=8: (sha or "")[:n])
    return env


def page(name: str, **context: Any) -> str:
    """The HTML of template ``name`` with ``context``."""
    return str(environment().get_template(name).render(**context))


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    parser = _need("markdown_it").MarkdownIt("commonmark", {"html": False, "linkify": False,
                                                             "typographer": False})
    return parser.enable(["table", "strikethrough"])


def card_body(text: str) -> str:
    """A README without its YAML front matter."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end >= 0:
            rest = text[end + 4:]
            return rest.split("\n", 1)[1] if "\n" in rest else ""
    return text


def markdown_html(text: str) -> str:
    """``text`` (markdown) as HTML in which raw HTML is escaped."""
    return str(_markdown().render(text))


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def when(value: dt.datetime | str | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM UTC``."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
