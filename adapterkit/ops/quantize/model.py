"""Low-bit adapter checkpoints and quantisation-aware training (QAT).

After Jie et al. 2023, "Revisiting the Parameter Efficiency of Adapters from the Perspective of
Precision Redundancy" (adapters keep their quality at 1 bit). The quantiser is
:func:`adapterkit.ops.quantize_tensor` (1 bit: sign times the channel's mean ``|w|``; 2/4/8 bits:
symmetric uniform with a searched clipping scale), with one float32 scale per channel.

Which tensors, and along which axis (``plan_tensor``): a floating adapter tensor of 2 or more
dims is viewed as (shape[0], rest) and gets ``bits``; its channels run along the *smaller* side,
so ``lora_A`` (r, in) gets one scale per rank component (row) and ``lora_B`` (out, r) one per
rank component too (column): 2r scales per LoRA site instead of r + out, which is what lets a
1-bit file reach ~30x below float32. Vectors (biases, norms, IA3/VeRA vectors) get
``vector_bits`` (default 8; None keeps them in full precision). Heads stay in full precision
unless ``heads=True``.

Checkpoint layout: ``adapter.safetensors`` holds ``__q__.codes<b>`` (uint8, the packed codes of
every tensor quantised at ``b`` bits, back to back, each starting on a byte), ``__q__.scales``
(float32, all scales back to back) and the unquantised tensors under their own names;
``adapter_config.json`` gets ``quantization: {"bits", "vector_bits", "scheme", "axis", "heads",
"dtype", "tensors": [[name, shape], ...]}`` (the order of the blobs). ``kit.load`` dequantises
before validating (``dequantize_checkpoint``).

QAT (``enable_qat``, or ``kit.train(name, quantize_bits=b)``) registers a :class:`FakeQuant`
parametrisation (``torch.nn.utils.parametrize``) on every floating parameter of the adapter:
the forward sees exactly the values a checkpoint stores and the gradient passes straight through
(Bengio et al. 2013). Saving writes those quantised values, ``quantize`` then stores them
bit-exactly, and ``disable_qat`` removes the parametrisations leaving the quantised values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...errors import LoadError
from .tensors import BITS, QuantizedTensor, dequantize_tensor, fake_quantize, quantize_tensor

if TYPE_CHECKING:
    from ...kit import AdapterKit

HEAD = "head::"
CODES, SCALES = "__q__.codes", "__q__.scales"
SCHEME = {1: "sign * mean|w| per channel",
          **{b: f"symmetric {b}-bit, clipped max scale per channel" for b in (2, 4, 8)}}
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _check_bits(bits: int | None, what: str, allow_none: bool = False) -> None:
    if (bits is None and allow_none) or bits in BITS:
        return
    raise ValueError(f"{what} must be one of {BITS}" + (" or None" if allow_none else "")
                     + f", got {bits!r}")


def plan_tensor(shape: tuple[int, ...], bits: int, vector_bits: int | None) -> tuple[int | None, bool]:
    """(bit width or None for full precision, transposed) of a floating tensor of ``shape``."""
    if len(shape) < 2:
        return vector_bits, False
    rows, cols = shape[0], math.prod(shape[1:])
    return bits, rows > cols


def _view(t: Tensor, transposed: bool) -> Tensor:
    x = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    return x.t() if transposed else x


def _unview(x: Tensor, shape: tuple[int, ...], transposed: bool) -> Tensor:
    return (x.t() if transposed else x).reshape(shape)


def fake_quant(t: Tensor, bits: int, transposed: bool) -> Tensor:
    """Quantise-dequantise ``t`` as a checkpoint stores it; straight-through gradient."""
    return _unview(fake_quantize(_view(t, transposed), bits), tuple(t.shape), transposed)


# -- checkpoints -------------------------------------------------------------------------------
@dataclass
class QuantizeReport:
    """What ``quantize`` wrote: sizes in bytes of the weights file before and after."""

    out: str
    bits: int
    vector_bits: int | None
    tensors: int
    params: int
    bytes_before: int
    bytes_after: int

    @property
    def ratio(self) -> float:
        return self.bytes_before / max(self.bytes_after, 1)

    def __str__(self) -> str:
        return (f"{self.out}: {self.tensors} tensors ({self.params:,} values) at {self.bits} bits"
                f" (vectors: {self.vector_bits or 'full precision'}); weights file "
                f"{self.bytes_before:,} -> {self.bytes_after:,} bytes ({self.ratio:.1f}x smaller)")


def quantize_tensors(tensors: dict[str, Tensor], bits: int, vector_bits: int | None = 8,
                     heads: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The flat tensors and the ``quantization`` config entry of a quantised checkpoint."""
    _check_bits(bits, "bits")
    _check_bits(vector_bits, "vector_bits", allow_none=True)
    codes: dict[int, list[Tensor]] = {}
    scales: list[Tensor] = []
    index: list[list[Any]] = []
    plain: dict[str, Tensor] = {}
    dtypes = set()
    for name, t in tensors.items():
        b, transposed = plan_tensor(tuple(t.shape), bits, vector_bits)
        if not t.is_floating_point() or b is None or (name.startswith(HEAD) and not heads):
            plain[name] = t
            continue
        q = quantize_tensor(_view(t.detach().cpu(), transposed).contiguous(), b)
        codes.setdefault(b, []).append(q.codes)
        scales.append(q.scales)
        index.append([name, list(t.shape)])
        dtypes.add(str(t.dtype))
    if len(dtypes) > 1:
        raise ValueError(f"the adapter mixes dtypes {sorted(dtypes)}; quantise one dtype at a time")
    flat = {f"{CODES}{b}": torch.cat(c) for b, c in codes.items()}
    if scales:
        flat[SCALES] = torch.cat(scales)
    meta = {"bits": bits, "vector_bits": vector_bits, "scheme": SCHEME[bits],
            "axis": "smaller", "heads": heads, "dtype": dtypes.pop() if dtypes else "float32",
            "tensors": index}
    return {**plain, **flat}, meta


def dequantize_checkpoint(meta: dict[str, Any], tensors: dict[str, Tensor],
                          where: str = "checkpoint") -> dict[str, Tensor]:
    """The plain tensors of a quantised checkpoint (``meta`` is its config)."""
    q = meta["quantization"]
    try:
        bits, vector_bits, dtype = int(q["bits"]), q["vector_bits"], _DTYPES[q["dtype"]]
        offsets = {k: 0 for k in tensors if k.startswith(CODES) or k == SCALES}
        out = {k: t for k, t in tensors.items() if k not in offsets}
        for name, shape in q["tensors"]:
            shape = tuple(int(d) for d in shape)
            b, transposed = plan_tensor(shape, bits, vector_bits)
            if b is None:
                raise ValueError(f"{name!r} of shape {shape} is listed as quantised, but "
                                 "vector_bits is None (full precision)")
            rows, cols = _view(torch.empty(shape, device="meta"), transposed).shape
            n_codes, key = math.ceil(rows * cols * b / 8), f"{CODES}{b}"
            qt = QuantizedTensor(codes=tensors[key][offsets[key]:offsets[key] + n_codes],
                                 scales=tensors[SCALES][offsets[SCALES]:offsets[SCALES] + rows],
                                 shape=(rows, cols), bits=b, dtype=dtype)
            offsets[key] += n_codes
            offsets[SCALES] += rows
            out[name] = _unview(dequantize_tensor(qt), shape, transposed).contiguous()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise LoadError(f"{where}: malformed quantised checkpoint ({type(exc).__name__}: {exc})") from None
    left = {k: tensors[k].numel() - n for k, n in offsets.items() if n != tensors[k].numel()}
    if left:
        raise LoadError(f"{where}: quantised blobs do not match the index (unused: {left})")
    return out


def quantize(directory: str | os.PathLike, bits: int, out: str | os.PathLike,
             vector_bits: int | None = 8, heads: bool = False) -> QuantizeReport:
    """Write a low-bit copy of the native adapter checkpoint at ``directory`` to ``out``
    (which may be ``directory`` itself); ``kit.load(out)`` dequantises transparently."""
    from ...core.checkpoint import WEIGHTS_FILE, read_checkpoint, write_checkpoint

    src = Path(directory)
    meta, tensors = read_checkpoint(src)
    if "quantization" in meta:
        raise LoadError(f"{src} is quantised already ({meta['quantization'].get('bits')} bits); "
                        "quantise the full-precision checkpoint")
    before = (src / WEIGHTS_FILE).stat().st_size
    flat, qmeta = quantize_tensors(tensors, bits, vector_bits, heads)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    write_checkpoint(out, {**meta, "quantization": qmeta}, flat)
    n = sum(math.prod(s) for _, s in qmeta["tensors"])
    return QuantizeReport(str(out), bits, vector_bits, len(qmeta["tensors"]), n, before,
                          (Path(out) / WEIGHTS_FILE).stat().st_size)


# -- quantisation-aware training ---------------------------------------------------------------
class FakeQuant(nn.Module):
    """Parametrisation: the tensor as a ``bits``-bit checkpoint stores it (straight-through)."""

    def __init__(self, bits: int, transposed: bool) -> None:
        super().__init__()
        self.bits, self.transposed = bits, transposed

    def forward(self, t: Tensor) -> Tensor:
        return fake_quant(t, self.bits, self.transposed)


def _qat_targets(kit: AdapterKit, name: str) -> list[tuple[nn.Module, str, nn.Parameter]]:
    out: list[tuple[nn.Module, str, nn.Parameter]] = []
    for module in kit.record(name).modules.values():
        for sub in list(module.modules()):
            if isinstance(sub, (parametrize.ParametrizationList, FakeQuant)):
                continue
            out.extend((sub, n, p) for n, p in sub.named_parameters(recurse=False)
                       if p.is_floating_point())
    return out


def enable_qat(kit: AdapterKit, name: str, bits: int, vector_bits: int | None = 8) -> int:
    """Quantisation-aware training of adapter ``name``: returns how many tensors got a
    :class:`FakeQuant`. Calling it again with the same widths does nothing."""
    _check_bits(bits, "quantize_bits")
    _check_bits(vector_bits, "vector_bits", allow_none=True)
    record = kit.record(name)
    current = record.extra.get("qat")
    if current is not None:
        if current == {"bits": bits, "vector_bits": vector_bits}:
            return 0
        raise ValueError(f"adapter {name!r} already trains at {current}; call disable_qat first")
    count = 0
    for sub, pname, p in _qat_targets(kit, name):
        b, transposed = plan_tensor(tuple(p.shape), bits, vector_bits)
        if b is not None:
            parametrize.register_parametrization(sub, pname, FakeQuant(b, transposed))
            count += 1
    record.extra["qat"] = {"bits": bits, "vector_bits": vector_bits}
    return count


def disable_qat(kit: AdapterKit, name: str) -> None:
    """Remove the QAT parametrisations of adapter ``name``, leaving the quantised values."""
    record = kit.record(name)
    for module in record.modules.values():
        for sub in list(module.modules()):
            if parametrize.is_parametrized(sub):
                for pname in list(cast(nn.ModuleDict, sub.parametrizations).keys()):
                    parametrize.remove_parametrizations(sub, pname, leave_parametrized=True)
    record.extra.pop("qat", None)
