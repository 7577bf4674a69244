"""Retrieval that composes, and access-filtered composition: ``kit.retrieve`` pulls the best
readable adapters, activates their weighted Average (or Stack) and reports why; its output
equals the hand-computed weighted sum of the deltas. Adapters a token cannot read are never
pulled or composed (retrieve skips them, a saved setup naming one fails naming the repo), and a
purged repo is found by nothing."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import adapterkit as ak
from adapterkit.compose.blocks import Average, Stack
from adapterkit.errors import AdapterError
from adapterkit.hub.gc import purge
from adapterkit.io.hub import RepoNotFoundError
from adapterkit.io.hub.retrieve import weights_from_scores

from ..models import build, inputs_for, run
from .conftest import Hub, lora_bert

SEEDS = {"alice/ret-a": 10, "alice/ret-b": 11, "alice/ret-c": 12, "alice/ret-private": 13}


@pytest.fixture(scope="module")
def library(hub: Hub) -> Hub:
    for repo, seed in SEEDS.items():
        lora_bert(seed).kit.push("a", repo, token=hub.alice, endpoint=hub.url,
                                 private=repo.endswith("private"))
    return hub


def fixed_search(scores: dict[str, float]) -> Any:
    """A search whose hits and scores are fixed (the composition, not the ranking, is tested)."""
    def search(query: str, **options: Any) -> list[dict[str, Any]]:
        assert options["compatible_with"] is not None
        return [{"repo_id": r, "score": s, "metadata": {}} for r, s in scores.items()]
    return search


def hand_merged(weights: dict[str, float]) -> torch.nn.Module:
    """The tiny BERT with ``W + sum_i w_i s B_i A_i`` written into every adapted weight."""
    model = build("bert")
    with torch.no_grad():
        for repo, w in weights.items():
            rec = lora_bert(SEEDS[repo]).kit.record("a")
            for host, mod in rec.modules.items():
                delta = mod.scale * (mod.lora_B @ mod.lora_A)  # type: ignore[operator]
                model.get_submodule(host).weight.add_(w * delta)
    return model


def test_retrieve_output_is_the_weighted_sum_of_the_deltas(library: Hub, tmp_path: Path) -> None:
    scores = {"alice/ret-a": 0.6, "alice/ret-private": 0.5, "alice/ret-b": 0.2, "alice/ret-c": 0.1}
    model = build("bert")
    kit = ak.AdapterKit(model)
    comp = kit.retrieve("sentiment", k=2, endpoint=library.url, token=library.bob, cache_dir=tmp_path,
                        search=fixed_search(scores))
    got = kit.last_retrieval
    assert comp is got.composition
    assert [c.repo_id for c in got.chosen] == ["alice/ret-a", "alice/ret-b"]  # the private one skipped
    assert got.skipped == [("alice/ret-private", "not readable with this token")]
    assert [c.weight for c in got.chosen] == pytest.approx([0.75, 0.25])  # 0.6 / 0.8, 0.2 / 0.8
    assert all(len(c.commit) == 40 and c.revision == "main" and c.reason for c in got.chosen)
    assert kit.composition == got.composition == Average(*got.names, weights=[c.weight for c in got.chosen])
    assert not any("ret-private" in str(p) for p in tmp_path.rglob("*"))  # never pulled
    x = inputs_for("bert")
    expected = run(hand_merged({"alice/ret-a": 0.6 / 0.8, "alice/ret-b": 0.2 / 0.8}), "bert", x)
    torch.testing.assert_close(run(model, "bert", x), expected, atol=1e-5, rtol=1e-5)
    assert "alice/ret-a@main" in got.report() and "skipped alice/ret-private" in got.report()


def test_retrieve_stack_and_softmax(library: Hub, tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    comp = kit.retrieve("x", k=2, mode="stack", weighting="softmax", temperature=0.5,
                        endpoint=library.url, token=library.alice, cache_dir=tmp_path,
                        search=fixed_search({"alice/ret-c": 0.3, "alice/ret-private": 0.1}))
    got = kit.last_retrieval
    w = weights_from_scores([0.3, 0.1], "softmax", 0.5)
    top = 1 / (1 + math.exp(-0.4))  # exp(0.3 / 0.5) / (exp(0.3 / 0.5) + exp(0.1 / 0.5))
    assert w == pytest.approx([top, 1 - top])
    assert comp == kit.composition == Stack(*(Average(n, weights=[v]) for n, v in zip(got.names, w)))
    assert [c.repo_id for c in got.chosen] == ["alice/ret-c", "alice/ret-private"]  # alice reads it


def test_retrieve_leaves_the_kit_unchanged_when_nothing_fits(library: Hub, tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    kit.retrieve("x", k=1, endpoint=library.url, token=library.bob, cache_dir=tmp_path,
                 search=fixed_search({"alice/ret-a": 1.0}))
    before, names = kit.last_retrieval, kit.names
    with pytest.raises(AdapterError, match="no compatible adapter"):
        kit.retrieve("x", endpoint=library.url, token=library.bob, cache_dir=tmp_path,
                     search=fixed_search({"alice/ret-private": 1.0, "alice/missing": 0.5}))
    assert kit.names == names and kit.composition == before.composition
    assert kit.last_retrieval is before  # the report of the last retrieval that succeeded
    with pytest.raises(AdapterError, match="mode must be one of"):
        kit.retrieve("x", mode="sum", endpoint=library.url, search=fixed_search({}))


def test_a_setup_naming_an_unreadable_adapter_fails_naming_it(library: Hub, tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    a = kit.load("hub://alice/ret-a", "a", endpoint=library.url, token=library.alice,
                 cache_dir=tmp_path / "c")
    p = kit.load("hub://alice/ret-private", "p", endpoint=library.url, token=library.alice,
                 cache_dir=tmp_path / "c")
    kit.activate(Average(a, p, weights=[0.5, 0.5]))
    kit.save_setup(tmp_path / "setup", sources={a: "hub://alice/ret-a", p: "hub://alice/ret-private"})
    assert not any((tmp_path / "setup").rglob("*.safetensors"))  # recorded by source only
    other = ak.AdapterKit(build("bert"))
    with pytest.raises(RepoNotFoundError, match="alice/ret-private"):
        other.load_setup(tmp_path / "setup", endpoint=library.url, token=library.bob,
                         cache_dir=tmp_path / "bob")
    assert other.names == [] and other.composition is None
    assert not any("ret-private" in str(q) for q in (tmp_path / "bob").rglob("*"))
    again = ak.AdapterKit(build("bert"))
    assert again.load_setup(tmp_path / "setup", endpoint=library.url, token=library.alice,
                            cache_dir=tmp_path / "c") == kit.composition


def test_a_purged_repo_is_retrieved_by_nothing(library: Hub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    lora_bert(14).kit.push("a", "alice/ret-gone", token=library.alice, endpoint=library.url)
    HfApi(endpoint=library.url, token=library.alice).delete_repo("alice/ret-gone")
    purge(library.server.hub, grace_s=0)
    kit = ak.AdapterKit(build("bert"))
    kit.retrieve("x", k=2, endpoint=library.url, token=library.alice, cache_dir=tmp_path,
                 search=fixed_search({"alice/ret-gone": 0.9, "alice/ret-a": 0.1}))
    got = kit.last_retrieval
    assert [c.repo_id for c in got.chosen] == ["alice/ret-a"]  # a stale hit is not pulled
    assert got.skipped == [("alice/ret-gone", "not readable with this token")]
    with pytest.raises(RepoNotFoundError, match="alice/ret-gone"):
        copy.deepcopy(kit).load("hub://alice/ret-gone", endpoint=library.url, token=library.alice,
                                cache_dir=tmp_path)


def test_retrieve_through_the_hubs_search_filters_by_access(library: Hub, tmp_path: Path) -> None:
    import warnings

    kit = ak.AdapterKit(build("bert"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a hub without the embedding model searches by text
        kit.retrieve("adapterkit lora adapter", k=10, endpoint=library.url, token=library.bob,
                     cache_dir=tmp_path)
        got = kit.last_retrieval
        kit.retrieve("adapterkit lora adapter", k=10, endpoint=library.url,
                     token=library.alice, cache_dir=tmp_path / "alice")
        mine = kit.last_retrieval
    found = {c.repo_id for c in got.chosen}
    assert {"alice/ret-a", "alice/ret-b", "alice/ret-c"} <= found
    assert "alice/ret-private" not in found and not got.skipped  # the search never offered it
    assert "alice/ret-private" in {c.repo_id for c in mine.chosen}
    assert not any("ret-private" in str(p) for p in tmp_path.glob("snapshots/*/alice/*"))
    assert sum(c.weight for c in got.chosen) == pytest.approx(1.0)


def test_the_retrieve_command(library: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import warnings

    from adapterkit.cli.main import main

    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    build("bert").save_pretrained(tmp_path / "model")
    argv = ["retrieve", "adapterkit lora adapter", "--model", str(tmp_path / "model"), "--k", "2",
            "--endpoint", library.url, "--token", library.bob, "--json",
            "--save-setup", str(tmp_path / "setup")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["chosen"]) == 2 and all(c["repo_id"].startswith("alice/ret-") for c in out["chosen"])
    assert "alice/ret-private" not in [c["repo_id"] for c in out["chosen"]]
    setup = json.loads((tmp_path / "setup" / "setup.json").read_text())
    assert [a["source"] for a in setup["adapters"]] == \
        [f"hub://{c['repo_id']}@{c['commit']}" for c in out["chosen"]]
    kit = ak.AdapterKit(build("bert"))
    comp = kit.load_setup(tmp_path / "setup", endpoint=library.url, token=library.bob,
                          cache_dir=tmp_path / "c")
    assert comp == Average(*[c["name"] for c in out["chosen"]], weights=[c["weight"] for c in out["chosen"]])
