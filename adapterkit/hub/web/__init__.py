"""The hub's web pages, server-rendered with Jinja2 (no build step, no JavaScript needed):
search with filters at ``/``, a repo page at ``/{owner}/{name}``, and a token login
(``/login``, ``/logout``) whose HttpOnly cookie lets a member see private repos.

``router`` holds them all; the app includes it after the API's routes.
"""

from fastapi import APIRouter

from . import login, pages
from .pages import missing_page, wants_page

router = APIRouter(include_in_schema=False)
router.include_router(login.router)
router.include_router(pages.router)

__all__ = ["missing_page", "router", "wants_page"]
