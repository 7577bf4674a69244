"""The hub's pages in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against one hub on 127.0.0.1 (SQLite) for the whole module.

Search from the page, open a repo, log in with a token and see a private repo appear, log out
and see it gone. With ``ADAPTERKIT_SCREENSHOTS=DIR`` (``make screenshots`` sets docs/img) the
same steps save their screenshots there. Without a browser the module skips with the reason,
and fails when ``ADAPTERKIT_REQUIRE_BROWSER`` is set (``.ci/run`` sets it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from .conftest import Hub, start_hub
from .web_seed import NER, PRIVATE, SST2, seed

CHROMIUM = os.environ.get("ADAPTERKIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


def browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (it is in the dev extra: pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return (f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it; "
                "ADAPTERKIT_CHROMIUM names another executable)")
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with ExitStack() as stack:
        hub = start_hub(stack, tmp_path_factory.mktemp("browser-hub"), "sqlite")
        seed(hub, tmp_path_factory.mktemp("browser-cards"))
        yield hub


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = browser_problem()
    if problem:
        if os.environ.get("ADAPTERKIT_REQUIRE_BROWSER"):
            pytest.fail(f"ADAPTERKIT_REQUIRE_BROWSER is set but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == [], f"JavaScript errors on the pages: {errors}"


def shot(page: Any, name: str) -> None:
    """A full-page screenshot under $ADAPTERKIT_SCREENSHOTS, when set."""
    folder = os.environ.get("ADAPTERKIT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"hub-{name}.png"), full_page=True)


def listed(page: Any) -> list[str]:
    return [a.inner_text() for a in page.locator("#hits a.repo").all()]


def test_search_from_the_page_and_open_a_repo(site: Hub, page: Any) -> None:
    page.goto(site.url + "/")
    assert page.title() == "Search adapters · adapterkit hub"
    page.fill("#q", "movie reviews")
    page.select_option("#f-mode", "text")
    page.click("#search")
    page.wait_for_url(re.compile(r"/\?q=movie\+reviews&"))
    assert listed(page)[0] == SST2
    page.fill("#q", "")
    page.select_option("#f-language", "de")
    page.click("#search")
    page.wait_for_url(re.compile("language=de"))
    assert listed(page) == [NER]
    page.goto(site.url + "/?q=sentiment")
    shot(page, "search")
    page.click(f'#hits a.repo:text-is("{SST2}")')
    page.wait_for_url(site.url + f"/{SST2}")
    assert page.locator("#card h1").inner_text() == "SST-2 sentiment LoRA"
    assert page.locator("#card table td").first.inner_text() == "validation"
    assert page.title() == f"{SST2} · adapterkit hub"  # the card's <script> never ran
    assert page.locator("#card script, #card img").count() == 0
    assert "onerror" in page.locator("#card").inner_text()  # shown as text
    files = page.locator("#files tr td:first-child a").all_inner_texts()
    assert files == ["README.md", "adapter.safetensors", "adapter_config.json"]
    assert len(page.locator("#files code.sha").first.inner_text()) == 64
    assert page.locator("#compatible li code").all_inner_texts() == ["tiny-bert", "tiny-bert-copy"]
    shot(page, "repo")


def test_login_shows_private_repos_and_logout_hides_them(site: Hub, page: Any) -> None:
    page.goto(site.url + "/?q=contract&mode=text")
    assert PRIVATE not in listed(page) and page.locator("#no-hits").is_visible()
    page.click("#login")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#token", "akh_wrong")
    page.click("#login-submit")
    assert "That token does not work" in page.locator("#login-error").inner_text()
    page.fill("#token", site.bob)
    page.click("#login-submit")
    page.wait_for_url(site.url + "/?q=contract&mode=text")  # back where the visitor was
    assert page.locator("#who").inner_text() == "bob"
    assert listed(page) == [PRIVATE] and page.locator("#hits .badge.private").is_visible()
    cookie = [c for c in page.context.cookies() if c["name"] == "akh_session"]
    assert cookie and cookie[0]["httpOnly"] and page.evaluate("document.cookie") == ""
    shot(page, "search-logged-in")
    page.click(f'#hits a.repo:text-is("{PRIVATE}")')
    page.wait_for_url(site.url + f"/{PRIVATE}")
    assert page.locator("#private").is_visible()
    assert page.locator("#card h1").inner_text() == "Contract clauses"
    shot(page, "private-repo")
    page.click("#logout")
    page.wait_for_url(site.url + "/")
    assert page.locator("#login").is_visible() and not page.context.cookies()
    page.goto(site.url + "/?q=contract&mode=text")
    assert PRIVATE not in listed(page)
    response = page.goto(site.url + f"/{PRIVATE}")
    assert response.status == 404
    assert f"There is no repo {PRIVATE} here that you may read" in page.locator("#not-found").inner_text()
