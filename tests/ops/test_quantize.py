"""Tests of adapterkit.ops.quantize."""

from __future__ import annotations

import math

import pytest
import torch

from adapterkit.ops.quantize.tensors import (
    QuantizedTensor,
    dequantize_state,
    dequantize_tensor,
    fake_quantize,
    quantize_state,
    quantize_tensor,
)

ALL_BITS = [1, 2, 4, 8]
SHAPES = [(6, 10), (3, 5), (7,), (2, 3, 3), (1, 1), (5, 1)]  # several numels not divisible by 8


def _rand(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_one_bit_is_exactly_sign_times_mean_abs():
    w = _rand((6, 10))
    w[2, 3] = 0.0
    scale = w.double().abs().mean(dim=1).float()  # (6,), L2-optimal sign scale per row
    want = torch.where(w >= 0, scale[:, None], -scale[:, None])
    got = dequantize_tensor(quantize_tensor(w, 1))
    assert torch.equal(got, want)
    assert got[2, 3] == scale[2] > 0  # zero maps to +s


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_requantising_quantised_values_is_bit_exact(bits, shape, dtype):
    q = quantize_tensor(_rand(shape, seed=len(shape), dtype=dtype), bits)
    x = dequantize_tensor(q)
    assert x.shape == shape and x.dtype == dtype
    q2 = quantize_tensor(x, bits)
    assert torch.equal(q2.codes, q.codes) and torch.equal(q2.scales, q.scales)
    assert torch.equal(dequantize_tensor(q2), x)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_round_trip_is_bit_exact_across_many_row_scales(bits):
    # 64 rows spanning 6 decades: an untrimmed float32 scale would drift by an ulp on some rows
    w = _rand((64, 8), seed=3) * torch.logspace(-3, 3, 64)[:, None]
    x = dequantize_tensor(quantize_tensor(w, bits))
    q2 = quantize_tensor(x, bits)
    assert torch.equal(dequantize_tensor(q2), x)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("numel", [1, 3, 7, 9, 13, 64])
def test_packed_size_is_bits_per_value(bits, numel):
    q = quantize_tensor(_rand((numel,)), bits)
    assert q.codes.dtype == torch.uint8
    assert q.codes.numel() == math.ceil(numel * bits / 8)
    assert q.scales.shape == (1,)  # 1-D: one scale for the whole tensor


def test_two_bit_packing_layout():
    # row max 1 -> scale 1, levels [-1, 0, 1, 0, -1] -> codes [0, 1, 2, 1, 0], first code lowest
    q = quantize_tensor(torch.tensor([[-1.0, 0.0, 1.0, 0.0, -1.0]]), 2)
    assert q.codes.tolist() == [0 | 1 << 2 | 2 << 4 | 1 << 6, 0]
    assert q.scales.tolist() == [1.0]


def test_scales_are_per_row():
    w = _rand((4, 8)) * torch.tensor([[1.0], [10.0], [100.0], [0.0]])
    q = quantize_tensor(w, 4)
    assert q.scales.shape == (4,)
    assert q.scales[0] < q.scales[1] < q.scales[2] and q.scales[3] == 0
    assert torch.equal(dequantize_tensor(q)[3], torch.zeros(8))


@pytest.mark.parametrize("seed", [0, 1])
def test_error_decreases_as_bits_increase(seed):
    w = _rand((64, 64), seed=seed)
    errors = [float((dequantize_tensor(quantize_tensor(w, b)) - w).norm()) for b in ALL_BITS]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4
    assert errors[-1] < 0.01 * float(w.norm())


@pytest.mark.parametrize("bits", ALL_BITS)
def test_fake_quantize_forward_is_quantised_and_gradient_is_identity(bits):
    t = _rand((5, 7)).requires_grad_()
    y = fake_quantize(t, bits)
    assert torch.equal(y.detach(), dequantize_tensor(quantize_tensor(t.detach(), bits)))
    upstream = _rand((5, 7), seed=9)
    (y * upstream).sum().backward()
    assert torch.equal(t.grad, upstream)


def test_state_round_trip_and_passthrough():
    state = {
        "lin.weight": _rand((6, 9)),
        "lin.bias": _rand((6,), seed=1),
        "half": _rand((3, 4), seed=2, dtype=torch.bfloat16),
        "steps": torch.tensor([3, 4], dtype=torch.int64),
    }
    flat = quantize_state(state, 2)
    assert flat["steps"] is state["steps"]
    assert flat["lin.weight.__q_codes"].numel() == math.ceil(54 * 2 / 8)
    assert flat["lin.bias.__q_scales"].shape == (1,)
    assert flat["lin.weight.__q_shape"].tolist() == [6, 9]
    back = dequantize_state(flat)
    assert set(back) == set(state)
    for name in ("lin.weight", "lin.bias", "half"):
        want = dequantize_tensor(quantize_tensor(state[name], 2))
        assert back[name].dtype == state[name].dtype
        assert torch.equal(back[name], want)


def test_malformed_states_name_every_problem():
    flat = quantize_state({"w": _rand((4, 4)), "b": _rand((4,))}, 4)
    del flat["w.__q_scales"], flat["b.__q_meta"]
    flat["x.__q_extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        dequantize_state(flat)
    msg = str(info.value)
    assert "'w.__q_scales'" in msg and "'b.__q_meta'" in msg and "unknown part 'extra'" in msg

    bad = quantize_state({"w": _rand((4, 4))}, 4)
    bad["w.__q_codes"] = bad["w.__q_codes"][:-1]
    with pytest.raises(ValueError, match=r"'w'.*codes must be uint8 of shape \(8,\)"):
        dequantize_state(bad)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="bits"):
        quantize_tensor(_rand((2, 2)), 3)
    with pytest.raises(ValueError, match="floating"):
        quantize_tensor(torch.ones(2, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="reserved"):
        quantize_state({"a.__q_codes": _rand((2,))}, 4)
    with pytest.raises(ValueError, match="scales"):
        QuantizedTensor(torch.zeros(1, dtype=torch.uint8), torch.ones(2), (3,), 2, torch.float32)
