"""Tests of adapterkit.ops.combine. TIES and DARE are checked against references written here
from the papers' definitions with plain Python loops over entries (a different style from the
vectorised implementation), plus a hand-computed TIES example with literal numbers."""

from __future__ import annotations

import pytest
import torch

from adapterkit.ops.combine.tensors import (
    combine_linear,
    combine_lora_cat,
    combine_lora_svd,
    combine_task_arithmetic,
    dare_drop,
    dare_linear,
    dare_ties,
    ties,
    trim_top_density,
)
from adapterkit.ops.lowrank.tensors import LoRAFactors

SHAPES = {"enc.q": (32, 48), "enc.v": (24, 16)}


def _lora(rank: int, scale: float, gen: torch.Generator) -> dict[str, LoRAFactors]:
    return {
        site: LoRAFactors(
            A=0.3 * torch.randn(rank, n_in, generator=gen),
            B=0.3 * torch.randn(n_out, rank, generator=gen),
            scale=scale,
        )
        for site, (n_out, n_in) in SHAPES.items()
    }


@pytest.fixture
def two_adapters() -> list[dict[str, LoRAFactors]]:
    gen = torch.Generator().manual_seed(0)
    return [_lora(4, 2.0, gen), _lora(8, 0.5, gen)]


WEIGHTS = [0.7, -1.3]


def _exact(adapters: list[dict[str, LoRAFactors]], site: str) -> torch.Tensor:
    return sum(w * ad[site].delta() for ad, w in zip(adapters, WEIGHTS))


# ------------------------------------------------------------------------------------- LoRA


def test_cat_equals_weighted_delta_sum(two_adapters):
    merged = combine_lora_cat(two_adapters, WEIGHTS)
    assert list(merged) == list(SHAPES)
    for site in SHAPES:
        assert merged[site].rank == 12 and merged[site].scale == 1.0
        assert torch.allclose(merged[site].delta(), _exact(two_adapters, site), atol=1e-5)


@pytest.mark.parametrize("method", ["qr", "dense", "auto"])
def test_svd_full_rank_is_exact(two_adapters, method):
    merged, energy = combine_lora_svd(two_adapters, WEIGHTS, method=method)
    for site in SHAPES:
        assert torch.allclose(merged[site].delta(), _exact(two_adapters, site), atol=1e-5)
        assert energy[site] == pytest.approx(1.0)


def test_svd_truncated_keeps_reported_energy_and_error_is_discarded_energy(two_adapters):
    merged, energy = combine_lora_svd(two_adapters, WEIGHTS, rank=3)
    for site in SHAPES:
        exact = _exact(two_adapters, site)
        sq = torch.linalg.svdvals(exact).double() ** 2
        assert merged[site].rank == 3
        assert energy[site] == pytest.approx(float(sq[:3].sum() / sq.sum()), rel=1e-5)
        err = float(((merged[site].delta() - exact).double() ** 2).sum())
        assert err == pytest.approx(float(sq[3:].sum()), rel=1e-3)


def test_svd_energy_threshold_picks_smallest_rank(two_adapters):
    merged, energy = combine_lora_svd(two_adapters, WEIGHTS, energy=0.8)
    for site in SHAPES:
        sq = torch.linalg.svdvals(_exact(two_adapters, site)).double() ** 2
        share = (torch.cumsum(sq, 0) / sq.sum()).tolist()
        want = next(k + 1 for k, v in enumerate(share) if v >= 0.8)
        assert merged[site].rank == want
        assert energy[site] == pytest.approx(share[want - 1], rel=1e-5)


def test_svd_qr_and_dense_paths_agree(two_adapters):
    qr, e_qr = combine_lora_svd(two_adapters, WEIGHTS, rank=5, method="qr")
    dense, e_dense = combine_lora_svd(two_adapters, WEIGHTS, rank=5, method="dense")
    for site in SHAPES:
        assert torch.allclose(qr[site].delta(), dense[site].delta(), atol=1e-5)
        assert e_qr[site] == pytest.approx(e_dense[site], rel=1e-5)


def test_svd_splits_sqrt_sigma_evenly(two_adapters):
    merged, _ = combine_lora_svd(two_adapters, WEIGHTS, rank=4)
    f = merged["enc.q"]
    sigma = torch.linalg.svdvals(_exact(two_adapters, "enc.q"))[:4]
    assert torch.allclose(f.A.norm(dim=1), sigma.sqrt(), rtol=1e-4)
    assert torch.allclose(f.B.norm(dim=0), sigma.sqrt(), rtol=1e-4)


def test_lora_mismatches_are_all_named():
    gen = torch.Generator().manual_seed(1)
    ad0 = {
        "a": LoRAFactors(torch.randn(2, 6, generator=gen), torch.randn(8, 2, generator=gen)),
        "b": LoRAFactors(torch.randn(2, 6, generator=gen), torch.randn(8, 2, generator=gen)),
        "c": LoRAFactors(torch.randn(2, 4, generator=gen), torch.randn(4, 2, generator=gen)),
    }
    ad1 = {
        "a": LoRAFactors(torch.randn(3, 5, generator=gen), torch.randn(8, 3, generator=gen)),
        "b": LoRAFactors(torch.randn(3, 6, generator=gen), torch.randn(7, 3, generator=gen)),
        "d": LoRAFactors(torch.randn(2, 4, generator=gen), torch.randn(4, 2, generator=gen)),
    }
    for combine in (combine_lora_cat, combine_lora_svd):
        with pytest.raises(ValueError) as info:
            combine([ad0, ad1], [1.0, 1.0])
        msg = str(info.value)
        for part in (
            "adapter 0 lacks ['d']",
            "adapter 1 lacks ['c']",
            "'a': adapter 0 (8, 6), adapter 1 (8, 5)",
            "'b': adapter 0 (8, 6), adapter 1 (7, 6)",
        ):
            assert part in msg


# ---------------------------------------------------------------------------- generic states


def test_linear_and_task_arithmetic_match_loops():
    gen = torch.Generator().manual_seed(2)
    states = [
        {"w": torch.randn(4, 5, generator=gen), "b": torch.randn(5, generator=gen)}
        for _ in range(3)
    ]
    weights = [0.5, -2.0, 1.5]
    summed = combine_task_arithmetic(states, weights)
    mean = combine_linear(states)
    for key in ("w", "b"):
        flat = [s[key].reshape(-1).tolist() for s in states]
        want_sum = [sum(w * f[j] for w, f in zip(weights, flat)) for j in range(len(flat[0]))]
        want_mean = [sum(f[j] for f in flat) / 3 for j in range(len(flat[0]))]
        assert summed[key].reshape(-1).tolist() == pytest.approx(want_sum, abs=1e-5)
        assert mean[key].reshape(-1).tolist() == pytest.approx(want_mean, abs=1e-6)


def test_state_mismatches_are_all_named():
    s0 = {"x": torch.zeros(2, 3), "y": torch.zeros(4), "only0": torch.zeros(1)}
    s1 = {"x": torch.zeros(3, 2), "y": torch.zeros(5)}
    with pytest.raises(ValueError) as info:
        combine_linear([s0, s1])
    msg = str(info.value)
    assert "state 1 lacks ['only0']" in msg
    assert "'x': state 0 (2, 3), state 1 (3, 2)" in msg
    assert "'y': state 0 (4,), state 1 (5,)" in msg
    with pytest.raises(ValueError, match="2 states but 1 weights"):
        combine_task_arithmetic([s0, s0], [1.0])


def test_bf16_inputs_keep_dtype():
    states = [{"w": torch.ones(2, 2, dtype=torch.bfloat16)}] * 2
    assert combine_linear(states)["w"].dtype == torch.bfloat16
    assert ties(states, [1.0, 1.0], 0.5)["w"].dtype == torch.bfloat16


# ------------------------------------------------------------------- TIES: hand-made examples

TAU = [
    torch.tensor([[3.0, -1.0, 0.5], [-4.0, 2.0, -0.2]]),
    torch.tensor([[-2.0, 1.5, 0.1], [-1.0, -3.0, 0.3]]),
    torch.tensor([[1.0, 0.2, 2.5], [0.4, 1.2, -0.6]]),
]


def test_ties_hand_computed_unweighted():
    # density 0.5 keeps 3 of 6: t1 -> [[3,0,0],[-4,2,0]], t2 -> [[-2,1.5,0],[0,-3,0]],
    # t3 -> [[1,0,2.5],[0,1.2,0]]; sums [[2,1.5,2.5],[-4,0.2,0]] elect [[+,+,+],[-,+,0]];
    # agreeing means: (3+1)/2, 1.5, 2.5, -4, (2+1.2)/2, and 0 where the sum is 0.
    merged = ties([{"w": t} for t in TAU], [1.0, 1.0, 1.0], density=0.5)["w"]
    assert torch.allclose(merged, torch.tensor([[2.0, 1.5, 2.5], [-4.0, 1.6, 0.0]]), atol=1e-6)


def test_ties_hand_computed_weighted():
    # weights scale the trimmed values before the election: v2 = 2*t2, v3 = 0.5*t3;
    # sums [[-0.5,3,1.25],[-4,-3.4,0]] elect [[-,+,+],[-,-,0]].
    merged = ties([{"w": t} for t in TAU], [1.0, 2.0, 0.5], density=0.5)["w"]
    assert torch.allclose(merged, torch.tensor([[-4.0, 3.0, 1.25], [-4.0, -6.0, 0.0]]), atol=1e-6)


def test_trim_breaks_magnitude_ties_by_lower_index():
    out = trim_top_density(torch.tensor([0.5, 1.0, -1.0, 1.0]), 0.5)
    assert out.tolist() == [0.0, 1.0, -1.0, 0.0]


# ------------------------------------------------------------------ TIES / DARE: references


def _ref_trim(values: list[float], density: float) -> list[float]:
    k = int(density * len(values) + 0.5)
    ranked = sorted(range(len(values)), key=lambda j: (-abs(values[j]), j))
    kept = set(ranked[:k])
    return [v if j in kept else 0.0 for j, v in enumerate(values)]


def _ref_elect_merge(columns: list[list[float]]) -> list[float]:
    """columns[i][j] = weighted value of task i at entry j."""
    merged = []
    for j in range(len(columns[0])):
        total = sum(col[j] for col in columns)
        if total == 0:
            merged.append(0.0)
            continue
        agreeing = [col[j] for col in columns if col[j] != 0 and (col[j] > 0) == (total > 0)]
        merged.append(sum(agreeing) / len(agreeing) if agreeing else 0.0)
    return merged


def _tasks(seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(4, 5, generator=gen), "b": torch.randn(5, generator=gen)}
        for _ in range(3)
    ]


@pytest.mark.parametrize(
    ("density", "weights"),
    [(0.3, [1.0, 1.0, 1.0]), (0.6, [0.5, 2.0, -1.0]), (1.0, [1.0, 0.3, 0.7])],
)
def test_ties_matches_loop_reference(density, weights):
    tasks = _tasks(3)
    merged = ties(tasks, weights, density)
    for key in ("w", "b"):
        cols = [
            [w * v for v in _ref_trim(t[key].reshape(-1).tolist(), density)]
            for t, w in zip(tasks, weights)
        ]
        assert merged[key].reshape(-1).tolist() == pytest.approx(_ref_elect_merge(cols), abs=1e-6)


def _ref_dare_columns(tasks, weights, density, seed):
    """Documented draw order: per key (first dict's order), per task, one torch.rand draw."""
    gen = torch.Generator().manual_seed(seed)
    cols: dict[str, list[list[float]]] = {}
    for key in tasks[0]:
        cols[key] = []
        for t, w in zip(tasks, weights):
            u = torch.rand(t[key].shape, generator=gen).reshape(-1).tolist()
            vals = t[key].reshape(-1).tolist()
            cols[key].append([w * v / density if uj < density else 0.0 for v, uj in zip(vals, u)])
    return cols


def test_dare_linear_and_ties_match_loop_reference():
    tasks, weights, density = _tasks(4), [1.0, -0.5, 2.0], 0.4
    cols = _ref_dare_columns(tasks, weights, density, seed=7)
    lin = dare_linear(tasks, weights, density, seed=7)
    tie = dare_ties(tasks, weights, density, generator=torch.Generator().manual_seed(7))
    for key in ("w", "b"):
        want_lin = [sum(c[j] for c in cols[key]) for j in range(len(cols[key][0]))]
        assert lin[key].reshape(-1).tolist() == pytest.approx(want_lin, abs=1e-5)
        assert tie[key].reshape(-1).tolist() == pytest.approx(_ref_elect_merge(cols[key]), abs=1e-5)


def test_dare_drop_keeps_rescaled_entries_at_the_density_rate():
    t = torch.randn(64, 64) + 3.0  # no zero entries
    out = dare_drop(t, 0.3, torch.Generator().manual_seed(0))
    kept = out != 0
    assert torch.equal(out[kept], t[kept] / 0.3)
    assert abs(kept.double().mean().item() - 0.3) < 0.03


def test_dare_is_deterministic_given_the_seed():
    tasks = _tasks(5)
    a = dare_ties(tasks, [1.0] * 3, 0.5, seed=11)
    b = dare_ties(tasks, [1.0] * 3, 0.5, seed=11)
    c = dare_ties(tasks, [1.0] * 3, 0.5, seed=12)
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])


def test_dare_at_full_density_reduces_to_plain_merges():
    tasks, weights = _tasks(6), [0.5, 1.0, -2.0]
    lin = dare_linear(tasks, weights, 1.0, seed=0)
    tie = dare_ties(tasks, weights, 1.0, seed=0)
    ref_lin, ref_tie = combine_task_arithmetic(tasks, weights), ties(tasks, weights, 1.0)
    for key in ("w", "b"):
        assert torch.allclose(lin[key], ref_lin[key], atol=1e-6)
        assert torch.allclose(tie[key], ref_tie[key], atol=1e-6)


@pytest.mark.parametrize("density", [0.0, 1.5])
def test_bad_density_is_rejected(density):
    with pytest.raises(ValueError, match="density"):
        ties(_tasks(0), [1.0] * 3, density)
