"""Derived artifacts of LoRA commits: Arrow prototypes equal a dense SVD of ``B A`` (sign-aligned,
within 1e-4), the weight embedding, the prototypes endpoint (many repos, no weights, read access
honoured), "similar adapters", the prototypes Arrow uses after ``kit.load("hub://...")``, and
deletion of the artifacts with their commits (purge, repo deletion, expunge)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

import adapterkit as ak
from adapterkit.compose.arrow import PROTOTYPES_FILE, adapter_prototypes
from adapterkit.hub.db.derived import Artifact
from adapterkit.hub.derived import EMBEDDING_DIM, derive
from adapterkit.hub.expunge import expunge
from adapterkit.hub.gc import purge
from adapterkit.io.hub import HubClient, RepoNotFoundError
from adapterkit.io.hub.artifacts import prototypes, similar

from ..models import build
from .conftest import Hub, lora_bert


def dense_top(a: torch.Tensor, b: torch.Tensor) -> tuple[float, torch.Tensor]:
    """sigma_1 and v_1 of ``b @ a`` from a dense SVD, sign-aligned like the hub's (largest
    entry positive)."""
    _, s, vh = torch.linalg.svd((b.double() @ a.double()), full_matrices=False)
    v = vh[0]
    return float(s[0]), v if float(v[int(torch.argmax(v.abs()))]) >= 0 else -v


def lora_tensors(seed: int, sites: int = 3, n_in: int = 24, n_out: int = 20,
                 r: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(sites):
        out[f"layers.{i}.q.lora_A"] = torch.randn(r, n_in, generator=g)
        out[f"layers.{i}.q.lora_B"] = torch.randn(n_out, r, generator=g)
    return out


def kit_config(r: int = 4, alpha: float = 8) -> dict[str, object]:
    return {"format": "adapterkit", "method": "lora", "config": {"method": "lora", "r": r, "alpha": alpha}}


def test_prototypes_equal_a_dense_svd_in_both_formats() -> None:
    tensors = lora_tensors(0)
    peft = {f"base_model.model.{k}.weight": v for k, v in tensors.items()}
    for config, weights in ((kit_config(), tensors),
                            ({"peft_type": "LORA", "r": 4, "lora_alpha": 8}, peft)):
        derived = derive(config, weights)
        assert derived is not None and sorted(derived.prototypes) == [f"layers.{i}.q" for i in range(3)]
        for site, v in derived.prototypes.items():
            sigma, expected = dense_top(tensors[site + ".lora_A"], tensors[site + ".lora_B"])
            assert v.dtype == torch.float32 and float((v.double() - expected).abs().max()) < 1e-4
            assert math.isclose(derived.sigmas[site], 2.0 * sigma, rel_tol=1e-6)  # alpha / r = 2
        assert len(derived.embedding) == EMBEDDING_DIM
        assert math.isclose(sum(x * x for x in derived.embedding), 1.0, rel_tol=1e-9)


def test_embedding_is_sign_invariant_and_separates_adapters() -> None:
    tensors = lora_tensors(1)
    flipped = {k: (-v if k.endswith("lora_A") else v) for k, v in tensors.items()}  # same B A up to sign
    scaled = {k: 3 * v for k, v in tensors.items()}
    e = torch.tensor(derive(kit_config(), tensors).embedding)  # type: ignore[union-attr]
    for same in (flipped, scaled):
        assert float(e @ torch.tensor(derive(kit_config(), same).embedding)) > 0.999  # type: ignore[union-attr]
    other = torch.tensor(derive(kit_config(), lora_tensors(2)).embedding)  # type: ignore[union-attr]
    assert float(e @ other) < 0.9


def test_other_adapters_get_no_artifacts() -> None:
    tensors = lora_tensors(0)
    assert derive({"format": "adapterkit", "method": "ia3", "config": {}}, tensors) is None
    assert derive({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}, tensors) is None
    assert derive(kit_config(), {"x.weight": torch.ones(2, 2)}) is None


@pytest.fixture(scope="module")
def pushed(hub: Hub) -> Hub:
    for seed, repo, private in ((0, "alice/arrow-a", False), (1, "alice/arrow-b", False),
                                (2, "alice/arrow-private", True)):
        lora_bert(seed).kit.push("a", repo, token=hub.alice, endpoint=hub.url, private=private)
    return hub


def test_prototypes_endpoint_gives_many_adapters_without_weights(pushed: Hub, tmp_path: Path) -> None:
    got = prototypes(["alice/arrow-a", "alice/arrow-b@main", "alice/arrow-private"], endpoint=pushed.url,
                     token=pushed.alice, cache_dir=tmp_path)
    assert all(p.available for p in got.values())
    assert not any(tmp_path.rglob("*.safetensors"))  # nothing was pulled
    kit = lora_bert(0).kit
    for site, v in got["alice/arrow-a"].tensors().items():
        mod = kit.record("a").modules[site]
        _, expected = dense_top(mod.lora_A.detach(), mod.lora_B.detach())  # type: ignore[arg-type]
        assert float((v.double() - expected).abs().max()) < 1e-4
    assert sorted(got["alice/arrow-a"].tensors()) == sorted(kit.record("a").modules)


def test_prototypes_honour_read_access(pushed: Hub) -> None:
    for token in (pushed.bob, None):
        with pytest.raises(RepoNotFoundError, match="alice/arrow-private"):
            prototypes(["alice/arrow-a", "alice/arrow-private"], endpoint=pushed.url, token=token)
    with pytest.raises(RepoNotFoundError, match="alice/no-such"):
        prototypes(["alice/no-such"], endpoint=pushed.url, token=pushed.alice)


def test_similar_adapters(pushed: Hub) -> None:
    twin = lora_bert(0)
    with torch.no_grad():
        for p in twin.kit.parameters("a"):
            p.mul_(2.0)  # the same directions, larger
    twin.kit.push("a", "alice/arrow-twin", token=pushed.alice, endpoint=pushed.url)
    found = similar("alice/arrow-a", endpoint=pushed.url, token=pushed.bob)
    assert found[0]["repo_id"] == "alice/arrow-twin" and found[0]["score"] > 0.999
    assert "alice/arrow-private" not in [f["repo_id"] for f in found]  # bob cannot read it
    ids = [f["repo_id"] for f in similar("alice/arrow-a", endpoint=pushed.url, token=pushed.alice)]
    assert "alice/arrow-private" in ids and "alice/arrow-a" not in ids


def test_arrow_uses_the_hubs_prototypes_after_a_hub_load(pushed: Hub, tmp_path: Path) -> None:
    kit = ak.AdapterKit(build("bert"))
    name = kit.load("hub://alice/arrow-a", endpoint=pushed.url, token=pushed.alice, cache_dir=tmp_path)
    snapshot = HubClient(pushed.url, pushed.alice, tmp_path).pull("alice/arrow-a")
    assert (snapshot / PROTOTYPES_FILE).is_file()
    stored = prototypes(["alice/arrow-a"], endpoint=pushed.url, token=pushed.alice)["alice/arrow-a"]
    hub_side = stored.tensors()
    used = adapter_prototypes(kit, name)
    for site, v in hub_side.items():  # exactly the stored float32 vectors, not a recomputation
        assert torch.equal(used[site], v.double() / v.double().norm())


def _artifact_rows(hub: Hub, repo_commits: list[str]) -> int:
    with hub.server.hub.db.read() as s:
        return len(list(s.scalars(select(Artifact.commit_id).where(Artifact.commit_id.in_(repo_commits)))))


def test_artifacts_are_deleted_with_their_commits(pushed: Hub) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=pushed.url, token=pushed.alice)
    adapter = lora_bert(3)
    first = adapter.kit.push("a", "alice/arrow-gone", token=pushed.alice, endpoint=pushed.url)
    api.create_branch("alice/arrow-gone", branch="side")
    with torch.no_grad():
        next(iter(adapter.kit.parameters("a"))).add_(1.0)
    second = adapter.kit.push("a", "alice/arrow-gone", token=pushed.alice, endpoint=pushed.url,
                              branch="side")
    assert _artifact_rows(pushed, [first, second]) == 2
    api.delete_branch("alice/arrow-gone", branch="side")
    purge(pushed.server.hub, grace_s=0)  # the side branch's commit is unreachable: it goes
    assert _artifact_rows(pushed, [first, second]) == 1
    assert expunge(pushed.server.hub, "alice/arrow-gone", "adapter.safetensors") >= 1
    assert _artifact_rows(pushed, [first]) == 0  # no weights left in the tree, no artifacts
    third = lora_bert(4).kit.push("a", "alice/arrow-gone", token=pushed.alice, endpoint=pushed.url)
    assert _artifact_rows(pushed, [third]) == 1
    api.delete_repo("alice/arrow-gone")
    purge(pushed.server.hub, grace_s=0)
    assert _artifact_rows(pushed, [first, second, third]) == 0
    with pytest.raises(RepoNotFoundError):
        prototypes(["alice/arrow-gone"], endpoint=pushed.url, token=pushed.alice)


def test_a_peft_format_push_gets_prototypes_that_fit_its_sites(pushed: Hub, tmp_path: Path) -> None:
    lora_bert(5).kit.push("a", "alice/arrow-peft", token=pushed.alice, endpoint=pushed.url, format="peft")
    kit = ak.AdapterKit(build("bert"))
    name = kit.load("hub://alice/arrow-peft", endpoint=pushed.url, token=pushed.alice, cache_dir=tmp_path)
    stored = prototypes(["alice/arrow-peft"], endpoint=pushed.url, token=pushed.alice)["alice/arrow-peft"]
    used = adapter_prototypes(kit, name)
    assert sorted(stored.tensors()) == sorted(used)
    for site, v in stored.tensors().items():
        assert torch.equal(used[site], v.double() / v.double().norm())
