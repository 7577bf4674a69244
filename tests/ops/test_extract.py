"""Tests of adapterkit.ops.extract (and the rank choice in adapterkit.ops.lowrank)."""

from __future__ import annotations

import pytest
import torch

from adapterkit.ops.extract.tensors import extract_lora_from_weights, extract_lora_state
from adapterkit.ops.lowrank.tensors import choose_rank

SIGMA = [4.0, 3.0, 2.0, 1.0, 0.5]  # squares 16, 9, 4, 1, 0.25; total 30.25


def _known_spectrum(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, fine-tuned) whose difference is U diag(SIGMA) V^T, 12 x 9."""
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 5, generator=gen, dtype=torch.float64))  # (12, 5)
    v, _ = torch.linalg.qr(torch.randn(9, 5, generator=gen, dtype=torch.float64))  # (9, 5)
    delta = u @ torch.diag(torch.tensor(SIGMA, dtype=torch.float64)) @ v.T  # (12, 9)
    base = torch.randn(12, 9, generator=gen, dtype=torch.float64)
    return base.to(dtype), (base + delta).to(dtype)


def test_full_rank_reproduces_the_delta():
    gen = torch.Generator().manual_seed(1)
    base = 0.5 * torch.randn(24, 40, generator=gen)
    ft = base + 0.1 * torch.randn(24, 40, generator=gen)
    factors, kept = extract_lora_from_weights(base, ft, rank=None, energy=None)
    assert factors.rank == 24 and factors.A.dtype == torch.float32
    assert torch.allclose(factors.delta(), ft - base, atol=1e-5)
    assert kept == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("energy", "rank", "kept"),
    [
        (0.5, 1, 16 / 30.25),
        (0.85, 3, 29 / 30.25),
        (0.95, 3, 29 / 30.25),
        (25 / 30.25, 2, 25 / 30.25),
        (0.99, 4, 30 / 30.25),
        (1.0, 5, 1.0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_energy_threshold_picks_the_smallest_sufficient_rank(energy, rank, kept, dtype):
    base, ft = _known_spectrum(dtype)
    factors, got = extract_lora_from_weights(base, ft, energy=energy)
    assert factors.rank == rank
    assert got == pytest.approx(kept, rel=1e-5)
    discarded = sum(s * s for s in SIGMA[rank:])
    err = float(((factors.delta() - (ft - base)).double() ** 2).sum())
    assert err == pytest.approx(discarded, rel=1e-3, abs=1e-6)


def test_rank_overrides_energy():
    base, ft = _known_spectrum()
    factors, kept = extract_lora_from_weights(base, ft, rank=2, energy=0.99)
    assert factors.rank == 2 and kept == pytest.approx(25 / 30.25)


def test_choose_rank_edge_cases():
    s = torch.tensor(SIGMA)
    assert choose_rank(s) == 5
    assert choose_rank(s, rank=9) == 5
    assert choose_rank(torch.zeros(4), energy=0.9) == 0
    with pytest.raises(ValueError, match="energy"):
        choose_rank(s, energy=0.0)


def test_zero_delta_gives_rank_zero_factors():
    w = torch.randn(6, 4)
    factors, kept = extract_lora_from_weights(w, w.clone(), energy=0.9)
    assert factors.rank == 0 and kept == 1.0
    assert factors.A.shape == (0, 4) and factors.B.shape == (6, 0)
    assert torch.equal(factors.delta(), torch.zeros(6, 4))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(4, 3\)"):
        extract_lora_from_weights(torch.zeros(3, 4), torch.zeros(4, 3))


def test_state_driver_streams_and_reports():
    gen = torch.Generator().manual_seed(2)
    base = {
        "l1.weight": torch.randn(8, 12, generator=gen, dtype=torch.float64),
        "l1.bias": torch.randn(8, generator=gen, dtype=torch.float64),
        "l2.weight": torch.randn(6, 6, generator=gen, dtype=torch.float64),
        "l3.weight": torch.randn(10, 4, generator=gen, dtype=torch.float64),
    }
    low = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    low = low @ torch.randn(2, 12, generator=gen, dtype=torch.float64)  # rank-2 (8, 12)
    ft = {
        "l1.weight": base["l1.weight"] + low,
        "l1.bias": base["l1.bias"] + 1.0,
        "l2.weight": base["l2.weight"].clone(),
        "l3.weight": base["l3.weight"] + torch.randn(10, 4, generator=gen, dtype=torch.float64),
    }
    events: list[str] = []

    def items():
        for name, t in base.items():
            events.append(f"read {name}")
            yield name, t

    def lookup(name: str) -> torch.Tensor:
        events.append(f"lookup {name}")
        return ft[name]

    adapter, report = extract_lora_state(items(), lookup, energy=1.0 - 1e-9)
    assert events == [
        "read l1.weight",
        "lookup l1.weight",
        "read l1.bias",
        "read l2.weight",
        "lookup l2.weight",
        "read l3.weight",
        "lookup l3.weight",
    ]
    assert sorted(adapter) == ["l1", "l3"]
    assert report["l1"] == {
        "rank": 2,
        "energy": pytest.approx(1.0),
        "params": 2 * 20,
        "full_params": 96,
    }
    assert report["l2"] == {"rank": 0, "energy": 1.0, "params": 0, "full_params": 36}
    assert report["l3"]["rank"] == 4 and report["l3"]["params"] == 4 * 14
    assert torch.allclose(adapter["l1"].delta(), low, atol=1e-9)

    only, rep = extract_lora_state(
        base.items(), ft.__getitem__, rank=1, include=lambda n: n.startswith("l3")
    )
    assert list(only) == ["l3"] and rep["l3"]["rank"] == 1
    assert 0.0 < rep["l3"]["energy"] < 1.0
