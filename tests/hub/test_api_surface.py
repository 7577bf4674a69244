"""The rest of the ``HfApi`` surface a user reaches for: existence checks, trees and paths-info,
refs, commits, branches, tags, visibility, repo creation with ``exist_ok``, listing."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from .conftest import Hub, lora_bert, point_hf_at


@pytest.fixture(scope="module")
def api(hub: Hub) -> HfApi:
    lora_bert(seed=31).kit.push("a", "alice/surface", token=hub.alice, endpoint=hub.url)
    a = HfApi(endpoint=hub.url, token=hub.alice)
    with pytest.MonkeyPatch.context() as mp:
        point_hf_at(mp, hub.url)
        a.upload_file(path_or_fileobj=b"deep\n", path_in_repo="docs/deep/note.md", repo_id="alice/surface")
    return a


def test_existence_checks(api: HfApi) -> None:
    assert api.repo_exists("alice/surface") and not api.repo_exists("alice/nothing")
    assert api.revision_exists("alice/surface", "main") and not api.revision_exists("alice/surface", "nope")
    assert api.file_exists("alice/surface", "README.md") and not api.file_exists("alice/surface", "nope.md")


def test_trees_and_paths_info(api: HfApi) -> None:
    top = {f.path for f in api.list_repo_tree("alice/surface")}
    assert top == {"README.md", "adapter.safetensors", "adapter_config.json", "docs"}
    deep = {f.path for f in api.list_repo_tree("alice/surface", recursive=True)}
    assert {"docs", "docs/deep", "docs/deep/note.md"} <= deep
    inner = [f.path for f in api.list_repo_tree("alice/surface", path_in_repo="docs/deep")]
    assert inner == ["docs/deep/note.md"]
    infos = api.get_paths_info("alice/surface", ["README.md", "docs", "missing.txt"])
    assert sorted(i.path for i in infos) == ["README.md", "docs"]
    weights = next(f for f in api.list_repo_tree("alice/surface") if f.path == "adapter.safetensors")
    assert weights.lfs is not None and len(weights.lfs.sha256) == 64
    assert sorted(api.list_repo_files("alice/surface")) == [
        "README.md", "adapter.safetensors", "adapter_config.json", "docs/deep/note.md"]


def test_refs_branches_tags_and_history(api: HfApi) -> None:
    api.create_branch("alice/surface", branch="dev")
    api.create_branch("alice/surface", branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch("alice/surface", branch="dev")
    assert err.value.response.status_code == 409
    api.create_tag("alice/surface", tag="v1", revision="dev", tag_message="first")
    refs = api.list_repo_refs("alice/surface")
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1"]
    commits = api.list_repo_commits("alice/surface")
    assert [c.title for c in commits][:2] == ["Upload docs/deep/note.md with huggingface_hub",
                                              "Push adapter a (adapterkit format)"]
    assert api.model_info("alice/surface", revision="v1").sha == commits[0].commit_id
    api.delete_tag("alice/surface", tag="v1")
    api.delete_branch("alice/surface", branch="dev")
    assert {b.name for b in api.list_repo_refs("alice/surface").branches} == {"main"}


def test_create_repo_visibility_and_listing(api: HfApi, hub: Hub) -> None:
    url = api.create_repo("alice/fresh", private=True)
    assert url.repo_id == "alice/fresh"
    assert api.create_repo("alice/fresh", exist_ok=True).repo_id == "alice/fresh"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/fresh")
    assert err.value.response.status_code == 409
    assert api.model_info("alice/fresh").private
    api.update_repo_settings("alice/fresh", private=False)
    assert not HfApi(endpoint=hub.url, token=False).model_info("alice/fresh").private
    assert "alice/fresh" in [m.id for m in api.list_models(search="fresh")]
    assert api.whoami()["name"] == "alice"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("bob/not-yours")
    assert err.value.response.status_code == 403
