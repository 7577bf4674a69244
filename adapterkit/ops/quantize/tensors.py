"""Low-bit storage of adapter weights, after Jie et al. 2023, "Revisiting the Parameter
Efficiency of Adapters from the Perspective of Precision Redundancy" (adapters keep their
quality at 1-bit precision).

Quantisation is symmetric and per output channel: a tensor of 2 or more dims is viewed as
(shape[0], rest) and every row gets its own float32 scale ``s``; a 1-D or 0-D tensor (bias,
vector) is one row, i.e. one scale for the whole tensor. Schemes by ``bits``:

* 1 bit: ``value = +s`` where ``w >= 0`` (zeros included) and ``-s`` otherwise, with
  ``s = mean(|w_row|)``, the L2-optimal scale for sign quantisation (computed in float64).
* 2, 4, 8 bits: symmetric uniform grid with a zero level. ``qmax = 2**(bits-1) - 1`` (1, 7,
  127); ``q = clamp(round_half_even(w / s), -qmax, qmax)``, ``value = q * s``, stored code
  ``q + qmax`` (the top code ``2**bits - 1`` is unused; 2 bits is ternary {-s, 0, s}). The
  scale is ``s = c * max(|w_row|) / qmax`` rounded up to 17 significant bits, with the clipping
  ratio ``c`` in {1.0, 0.95, ..., 0.05} picked per row to minimise the squared error (the
  largest ``c`` wins ties). Without that search, plain max scaling at 2 bits is worse than the
  1-bit sign scheme on Gaussian-like weights.

Trimming the scale to 17 significant bits (relative change < 2**-16) makes every ``q * s``
exactly representable in float32. A dequantised row holds ``qmax * s`` in absolute value, so on
requantisation ``c = 1`` reproduces it with zero error while every smaller ``c`` clips it: codes
and scales come back identical and the round trip is bit-exact for float32/float64 tensors
(float16/bfloat16 cannot hold every ``q * s``, so for them it is exact up to their rounding).

Codes are packed densely, ``8 // bits`` codes per uint8 byte, first code in the lowest bits, rows
back to back, so a tensor of ``n`` values takes ``ceil(n * bits / 8)`` bytes plus its scales.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

BITS = (1, 2, 4, 8)
_SCALE_BITS = 17  # significant bits kept in a 2/4/8-bit scale: 7-bit code * 17 bits <= 24
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # ids for __q_meta
_PARTS = ("codes", "scales", "shape", "meta")
_MARK = ".__q_"
_CLIP_RATIOS = tuple(1.0 - i / 20 for i in range(20))  # 1.0, 0.95, ..., 0.05; 1.0 first


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """Per-row layout: (shape[0], prod(rest)) for >= 2 dims, else one row."""
    if len(shape) >= 2:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Packed codes (uint8, 1-D), float32 scales (one per row), and what is needed to rebuild."""

    codes: Tensor
    scales: Tensor
    shape: tuple[int, ...]
    bits: int
    dtype: torch.dtype

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        rows, cols = _rows_cols(self.shape)
        want = math.ceil(rows * cols * self.bits / 8)
        if self.codes.dtype != torch.uint8 or tuple(self.codes.shape) != (want,):
            raise ValueError(
                f"codes must be uint8 of shape ({want},) for {self.shape} at {self.bits} bits, "
                f"got {self.codes.dtype} {tuple(self.codes.shape)}"
            )
        if tuple(self.scales.shape) != (rows,):
            raise ValueError(f"scales must have shape ({rows},), got {tuple(self.scales.shape)}")
        if not self.dtype.is_floating_point:
            raise ValueError(f"original dtype must be floating point, got {self.dtype}")

    @property
    def nbytes(self) -> int:
        """Bytes of codes plus scales."""
        return self.codes.numel() + self.scales.numel() * self.scales.element_size()


def _pack(codes: Tensor, bits: int) -> Tensor:
    """(n,) codes < 2**bits -> (ceil(n * bits / 8),) uint8."""
    per = 8 // bits
    n = codes.numel()
    padded = torch.zeros(math.ceil(n / per) * per, dtype=torch.int32, device=codes.device)
    padded[:n] = codes
    shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits
    groups = padded.reshape(-1, per)  # (nbytes, per): one byte's codes per row
    return (groups << shifts).sum(dim=1).to(torch.uint8)  # disjoint bit fields, sum == or


def _unpack(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of ``_pack``: (nbytes,) uint8 -> (n,) int32 codes."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    fields = (packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)  # (nbytes, per)
    return fields.reshape(-1)[:n]


def _round_up_scale(s: Tensor) -> Tensor:
    """Round positive float64 ``s`` up to ``_SCALE_BITS`` significant bits (0 stays 0)."""
    mantissa, exponent = torch.frexp(s)  # s = mantissa * 2**exponent, mantissa in [0.5, 1)
    step = 2.0**_SCALE_BITS
    return torch.ldexp(torch.ceil(mantissa * step) / step, exponent)


def _levels(x: Tensor, scales: Tensor, qmax: int) -> Tensor:
    """Integer levels ``clamp(round(x / s), -qmax, qmax)`` of (rows, cols) ``x``; 0 where s = 0."""
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    return torch.round(x / safe[:, None]).clamp(-qmax, qmax)


def _search_scales(x: Tensor, qmax: int) -> Tensor:
    """Per-row scale ``c * max|x_row| / qmax`` (17-bit, rounded up) with the error-minimising
    clipping ratio ``c`` from ``_CLIP_RATIOS``; float64 of shape (rows,)."""
    peak = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])  # (rows,)
    best_s: Tensor | None = None
    best_err: Tensor | None = None
    for c in _CLIP_RATIOS:
        s = _round_up_scale(c * peak / qmax).to(torch.float32).to(torch.float64)
        err = ((_levels(x, s, qmax) * s[:, None] - x) ** 2).sum(dim=1)  # (rows,)
        if best_s is None or best_err is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s = torch.where(better, s, best_s)
            best_err = torch.where(better, err, best_err)
    assert best_s is not None  # _CLIP_RATIOS is not empty
    return best_s


def quantize_tensor(t: Tensor, bits: int) -> QuantizedTensor:
    """Quantise ``t`` per row (see the module docstring for the schemes)."""
    _check_bits(bits)
    if not t.is_floating_point():
        raise ValueError(f"can only quantise floating-point tensors, got {t.dtype}")
    shape = tuple(t.shape)
    rows, cols = _rows_cols(shape)
    x = t.detach().to(torch.float64).reshape(rows, cols)  # (rows, cols)
    if bits == 1:
        scales = x.abs().sum(dim=1) / max(cols, 1)
        codes = (x >= 0).to(torch.int32)
    else:
        qmax = 2 ** (bits - 1) - 1
        scales = _search_scales(x, qmax)
        codes = (_levels(x, scales, qmax) + qmax).to(torch.int32)
    return QuantizedTensor(
        codes=_pack(codes.reshape(-1), bits),
        scales=scales.to(torch.float32),
        shape=shape,
        bits=bits,
        dtype=t.dtype,
    )


def dequantize_tensor(q: QuantizedTensor) -> Tensor:
    """Values ``level * scale`` in the original shape and dtype."""
    rows, cols = _rows_cols(q.shape)
    codes = _unpack(q.codes, q.bits, rows * cols).to(torch.float64)
    levels = codes * 2 - 1 if q.bits == 1 else codes - (2 ** (q.bits - 1) - 1)
    values = levels.reshape(rows, cols) * q.scales.to(torch.float64)[:, None]  # (rows, cols)
    return values.to(q.dtype).reshape(q.shape)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, bits: int) -> Tensor:
        return dequantize_tensor(quantize_tensor(t, bits))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def fake_quantize(t: Tensor, bits: int) -> Tensor:
    """Quantise-dequantise in the forward pass with a straight-through gradient (identity), for
    quantisation-aware training."""
    _check_bits(bits)
    return _StraightThrough.apply(t, bits)


def quantize_state(state: Mapping[str, Tensor], bits: int) -> dict[str, Tensor]:
    """Flat, safetensors-ready form of ``state``. A floating tensor ``name`` becomes
    ``name.__q_codes`` (uint8), ``name.__q_scales`` (float32), ``name.__q_shape`` (int64, the
    original shape) and ``name.__q_meta`` (int64 ``[bits, dtype_id]``). Non-floating tensors
    are passed through unchanged. Names containing ``.__q_`` are reserved."""
    _check_bits(bits)
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if _MARK in name:
            raise ValueError(f"tensor name {name!r} contains the reserved marker {_MARK!r}")
        if not t.is_floating_point():
            out[name] = t
            continue
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name!r}: unsupported dtype {t.dtype}; use one of {_DTYPES}")
        q = quantize_tensor(t, bits)
        out[name + _MARK + "codes"] = q.codes
        out[name + _MARK + "scales"] = q.scales
        out[name + _MARK + "shape"] = torch.tensor(q.shape, dtype=torch.int64)
        out[name + _MARK + "meta"] = torch.tensor([bits, _DTYPES.index(t.dtype)], dtype=torch.int64)
    return out


def _rebuild(parts: Mapping[str, Tensor]) -> Tensor:
    meta = parts["meta"].tolist()
    if len(meta) != 2 or not 0 <= meta[1] < len(_DTYPES):
        raise ValueError(f"meta must be [bits, dtype_id < {len(_DTYPES)}], got {meta}")
    q = QuantizedTensor(
        codes=parts["codes"],
        scales=parts["scales"],
        shape=tuple(int(d) for d in parts["shape"].tolist()),
        bits=int(meta[0]),
        dtype=_DTYPES[meta[1]],
    )
    return dequantize_tensor(q)


def dequantize_state(flat: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``quantize_state``. Raises ``ValueError`` naming every tensor whose parts are
    missing, unknown or inconsistent."""
    groups: dict[str, dict[str, Tensor]] = {}
    out: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, t in flat.items():
        if _MARK not in key:
            out[key] = t
            continue
        name, part = key.rsplit(_MARK, 1)
        if part not in _PARTS:
            problems.append(f"{key!r}: unknown part {part!r} (expected one of {_PARTS})")
        groups.setdefault(name, {})[part] = t
    for name, parts in groups.items():
        missing = [p for p in _PARTS if p not in parts]
        if missing:
            problems.append(f"{name!r}: missing {[name + _MARK + p for p in missing]}")
        elif name in out:
            problems.append(f"{name!r}: present both plain and quantised")
        else:
            try:
                out[name] = _rebuild(parts)
            except ValueError as err:
                problems.append(f"{name!r}: {err}")
    if problems:
        raise ValueError("malformed quantised state:\n  " + "\n  ".join(problems))
    return out
