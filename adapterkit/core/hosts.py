"""Host modules as adapters see them, plain or quantized: their dense (dequantized) weight, their
feature sizes, the dtype adapters on them are built in, and merging into a quantized weight.

Quantized hosts: bitsandbytes ``Linear4bit`` (NF4 and FP4) and ``Linear8bitLt`` (int8 weights,
``has_fp16_weights=False``), and ``nn.Linear`` holding a torchao int8 weight-only tensor
(``Int8WeightOnlyConfig``). Any other quantized weight (an integer or packed dtype, or another
torchao tensor) is refused with a :class:`~adapterkit.errors.TargetError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import NotMergeableError, TargetError

BNB4, BNB8, TORCHAO, DENSE = "bnb-4bit", "bnb-8bit", "torchao-int8", "dense"
SUPPORTED = ("bitsandbytes Linear4bit (nf4, fp4)", "bitsandbytes Linear8bitLt (int8)",
             "torchao int8 weight-only (Int8WeightOnlyConfig)")
_HALF = (torch.float16, torch.bfloat16)
_STASH = "_adapterkit_quant_stash"


def kind_of(module: nn.Module) -> str:
    """Which kind of host ``module`` is: ``dense``, ``bnb-4bit``, ``bnb-8bit`` or
    ``torchao-int8``; raises for a quantized weight of any other kind."""
    owner = type(module).__module__
    if owner.startswith("bitsandbytes"):
        name = type(module).__name__
        if name in ("Linear4bit", "LinearNF4", "LinearFP4"):
            if getattr(module.weight, "quant_state", None) is None:
                raise TargetError(f"this {name} is not quantized yet (its weight has no "
                                  "quant_state): move the model to its device first")
            return BNB4
        if name == "Linear8bitLt":
            state: Any = module.state
            if state.has_fp16_weights:
                raise TargetError("Linear8bitLt with has_fp16_weights=True keeps trainable "
                                  "fp16 weights; load it with has_fp16_weights=False")
            return BNB8
        raise TargetError(f"the bitsandbytes layer {name} is not supported; supported quantized "
                          f"hosts: {list(SUPPORTED)}")
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and type(w).__module__.startswith("torchao"):
        if type(w).__name__ in ("Int8Tensor", "AffineQuantizedTensor") and _int8_weight_only(w):
            return TORCHAO
        raise TargetError(f"the torchao weight type {type(w).__name__} is not supported; "
                          f"supported quantized hosts: {list(SUPPORTED)}")
    if isinstance(w, torch.Tensor) and not (w.is_floating_point() or w.is_complex()) \
            and not isinstance(module, nn.Embedding | nn.EmbeddingBag):
        raise TargetError(f"{type(module).__name__} holds a {w.dtype} weight, a quantization "
                          f"backend adapterkit does not know; supported quantized hosts: "
                          f"{list(SUPPORTED)}")
    return DENSE


def _int8_weight_only(w: torch.Tensor) -> bool:
    act = getattr(w, "act_quant_kwargs", None)
    return act is None  # a dynamic-activation config quantizes inputs too


def is_quantized(module: nn.Module) -> bool:
    return kind_of(module) != DENSE


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a quantized Linear host dequantized, as (out, in) in its float dtype."""
    kind = kind_of(module)
    w: Any = module.weight
    if kind == BNB4:
        import bitsandbytes.functional as bf

        return bf.dequantize_4bit(w.data, w.quant_state)
    if kind == BNB8:
        scb = _scb(module)
        return w.data.float() * (scb.float()[:, None] / 127.0)
    if kind == TORCHAO:
        return w.dequantize()
    return w


def _scb(module: nn.Module) -> torch.Tensor:
    m: Any = module
    scb = getattr(m.weight, "SCB", None)
    return scb if scb is not None else m.state.SCB


def float_dtype(module: nn.Module) -> torch.dtype:
    """The float dtype this host computes in: its weight's, or for bitsandbytes its compute
    (4-bit) or output dtype (8-bit: float16 unless the bias says otherwise)."""
    kind = kind_of(module)
    m: Any = module
    if kind == BNB4:
        return m.compute_dtype or m.weight.quant_state.dtype
    if kind == BNB8:
        bias = getattr(m, "bias", None)
        return bias.dtype if bias is not None else torch.float16
    return m.weight.dtype


def like(module: nn.Module) -> torch.Tensor:
    """A tensor with the device and float dtype that adapter parameters on this host start in:
    the weight itself for a dense host, an empty float tensor for a quantized one."""
    w: Any = module.weight
    if kind_of(module) == DENSE:
        return w
    return torch.empty(0, dtype=float_dtype(module), device=w.device)


def adapter_dtype(module: nn.Module, chosen: torch.dtype | None = None) -> torch.dtype:
    """The dtype of adapter parameters on this host: ``chosen``, else float32 on a float16,
    bfloat16 or quantized host, else the host's own dtype."""
    if chosen is not None:
        return chosen
    dtype = float_dtype(module)
    return torch.float32 if is_quantized(module) or dtype in _HALF else dtype


@dataclass
class MergeReport:
    """What ``kit.merge`` did: for each quantized host, the largest absolute difference between
    the requantized weight and the exact ``W + delta`` (dense hosts are exact: not listed)."""

    adapter: str
    rounding_error: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.rounding_error.values(), default=0.0)


def _snapshot(module: nn.Module, kind: str) -> Any:
    w: Any = module.weight
    if kind == BNB4:
        return (w.data, w.quant_state)
    return (w.data, _scb(module))


def _restore(module: nn.Module, kind: str, saved: Any) -> None:
    data, extra = saved
    w: Any = module.weight
    w.data = data
    if kind == BNB4:
        w.quant_state = extra
    else:
        _set_int8(module, data, extra)


def _set_int8(module: nn.Module, cb: torch.Tensor, scb: torch.Tensor) -> None:
    w: Any = module.weight
    state: Any = module.state
    w.data = cb
    if getattr(w, "SCB", None) is not None:
        w.SCB = scb
    else:
        state.SCB, state.CB = scb, cb


def _requantize(module: nn.Module, kind: str, dense: torch.Tensor) -> None:
    w: Any = module.weight
    if kind == BNB4:
        import bitsandbytes.functional as bf

        qs = w.quant_state
        data, state = bf.quantize_4bit(dense.to(qs.dtype), blocksize=qs.blocksize,
                                       compress_statistics=qs.nested, quant_type=qs.quant_type,
                                       quant_storage=w.data.dtype)
        w.data, w.quant_state = data, state
        return
    import bitsandbytes.functional as bf

    cb, scb, _ = bf.int8_vectorwise_quant(dense.to(torch.float16))
    _set_int8(module, cb, scb)


def add_quantized(host: nn.Module, delta: torch.Tensor, key: int, sign: float) -> float:
    """``W += sign * delta`` on a quantized host: dequantize, add, requantize; returns the
    largest absolute rounding error of the requantized weight. Merging (``sign`` 1) keeps the
    host's quantized state under ``key`` so that unmerging the latest merge restores it
    exactly; an older merge is taken out by subtracting and requantizing."""
    kind = kind_of(host)
    if kind == TORCHAO:
        raise NotMergeableError("merging into a torchao int8 weight is not supported (it would "
                                "requantize with a config adapterkit cannot read back); keep the "
                                "adapter unmerged, or dequantize the base model first")
    stash: list[tuple[int, Any]] = host.__dict__.setdefault(_STASH, [])
    if sign < 0 and stash and stash[-1][0] == key:
        _restore(host, kind, stash.pop()[1])
        return 0.0
    if sign < 0:
        stash[:] = [s for s in stash if s[0] != key]
    else:
        stash.append((key, _snapshot(host, kind)))
    target = dense_weight(host).float() + sign * delta.float()
    _requantize(host, kind, target)
    return float((dense_weight(host).float() - target).abs().max())


#: methods whose modules work on a quantized host (they read its weight through
#: :func:`dense_weight` and build their parameters from :func:`like`)
QUANTIZED_METHODS = ("lora", "dora", "ia3", "vera", "bottleneck", "adapterbias", "compacter",
                     "sparse_adapter")


def check_method(spec: Any, sites: list[Any], finder: Any) -> None:
    """Refuse a method on quantized hosts that it cannot run on, and any unknown quantized
    host (:func:`kind_of` raises)."""
    quantized = [s.host for s in sites if kind_of(finder.module(s.host)) != DENSE]
    if quantized and spec.name not in QUANTIZED_METHODS:
        raise TargetError(f"{spec.name} cannot attach to quantized hosts ({quantized[:3]}...); "
                          f"methods that can: {list(QUANTIZED_METHODS)}")


def cast_adapter(module: nn.Module, host: nn.Module, kind: Any, chosen: torch.dtype | None) -> None:
    """Give a new adapter module's float parameters :func:`adapter_dtype`; prompt and prefix
    modules keep the embedding's dtype unless one is ``chosen``."""
    if chosen is None and getattr(kind, "value", kind) not in ("weight_delta", "residual"):
        return
    dtype = adapter_dtype(host, chosen)
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)


def check_mergeable(modules: list[nn.Module], name: str) -> None:
    """Raise before anything changes when a host cannot take a merge."""
    for host in modules:
        if kind_of(host) == TORCHAO:
            raise NotMergeableError(
                f"adapter {name!r} cannot be merged into a torchao int8 weight (requantizing "
                "it with a config adapterkit cannot read back would change outputs silently); "
                "keep it unmerged, or dequantize the base model first")


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The shape of a host's weight as the model defines it: (out, in) for a quantized Linear,
    whatever packed layout its storage has now (bitsandbytes repacks 4-bit weights for its CPU
    kernels on the first forward)."""
    w: Any = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return ()
    state = getattr(w, "quant_state", None)
    if state is not None and kind_of(module) == BNB4:
        return tuple(state.shape)
    return tuple(w.shape)
