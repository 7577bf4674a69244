"""Routes compiled once and reused (a server routes the same rows on every decoding step): the
reused plan and its cached stacks follow in-place weight edits, unloads, reloads under an old
name and merges, and routes over the same adapters in another order share their stacks."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak

from .helpers import perturb
from .models import run
from .test_route import LORAS, TOL, _alone, _batch, _kit

FAMILY = "llama"


def _routed(model, kit, batch, ids, strategy="gather") -> torch.Tensor:
    with torch.inference_mode(), kit.route(ids, strategy=strategy):
        return run(model, FAMILY, batch)


def _gather_entries(kit) -> int:
    """How many LoRA gather stacks the slots of the kit's hosts hold."""
    slots = {id(m): m for m in kit.model.modules() if type(m).__name__ == "AdapterSlot"}
    return sum(1 for s in slots.values() for key in s.route_cache._entries
               if isinstance(key, tuple) and key[0] == "lora-gather")


@pytest.mark.parametrize("strategy", ["gather", "dense"])
def test_reused_route_follows_in_place_edits_and_unloads(strategy: str) -> None:
    model, kit = _kit(FAMILY, LORAS)
    ids = ["a", "b", "c", "a", "__base__"]
    batch = _batch(FAMILY)
    _routed(model, kit, batch, ids, strategy)
    plan = kit._exec.route_plans[(tuple(ids), strategy)][1]
    _routed(model, kit, batch, ids, strategy)
    assert kit._exec.route_plans[(tuple(ids), strategy)][1] is plan  # compiled once
    perturb(kit, "b", std=0.3, seed=99)  # in place, between two uses of the cached plan
    got = _routed(model, kit, batch, ids, strategy)
    torch.testing.assert_close(got, _alone(model, kit, FAMILY, batch, ids), **TOL)
    kit.remove("c")  # unloaded: the cached plan naming it is gone with it
    with pytest.raises(ak.AdapterNameError, match="no adapter named 'c'"):
        _routed(model, kit, batch, ids, strategy)
    kit.add("c", ak.LoRA(r=3, targets=("attn.q", "attn.k")))  # a new adapter, an old name
    perturb(kit, "c", std=0.2, seed=8)
    got = _routed(model, kit, batch, ids, strategy)
    torch.testing.assert_close(got, _alone(model, kit, FAMILY, batch, ids), **TOL)
    kit.merge("a")
    with pytest.raises(ak.CompositionError, match="merged into the base weights"):
        _routed(model, kit, batch, ids, strategy)


def test_routes_over_the_same_adapters_share_stacks() -> None:
    model, kit = _kit(FAMILY, LORAS)
    batch = _batch(FAMILY, n=4)
    orders = (["a", "b", "c", "a"], ["c", "a", "b", "b"], ["b", "c", "a", "c"])
    for ids in orders:
        got = _routed(model, kit, batch, ids)
        torch.testing.assert_close(got, _alone(model, kit, FAMILY, batch, ids), **TOL)
    hosts = len({h for n in LORAS for h in kit.record(n).modules})
    assert _gather_entries(kit) == hosts  # one stack per host, whatever the order of rows
    _routed(model, kit, batch, ["a", "b", "__base__", "a"])  # another set of adapters
    assert _gather_entries(kit) == 2 * hosts


def test_low_precision_gather_matches_float32() -> None:
    """On CPU the gather kernel runs bfloat16 rows in float32: the result is the float32 delta
    rounded once."""
    from adapterkit.core.kernels import lora_route

    model, kit = _kit(FAMILY, LORAS)
    host = next(h for h in kit.record("a").modules)
    mods = tuple(kit.record(n).modules[host] for n in LORAS)
    x = torch.randn(6, 1, mods[0].lora_A.shape[1])
    rows = torch.tensor([0, 1, 2, -1, 1, 0])
    base = model.get_submodule(host)
    h = torch.zeros(6, 1, mods[0].lora_B.shape[0])
    want = lora_route(mods, rows, h, [x] * 3, base, strategy="gather")
    for m in mods:
        m.to(torch.bfloat16)
    got = lora_route(mods, rows, h.bfloat16(), [x.bfloat16()] * 3, base, strategy="gather")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)
