"""Per-example routing kernels: the deltas of several adapters of one method at one host, each row
of the batch with its own adapter.

Every kernel takes ``modules`` (K adapter modules of one class at one host), ``rows``: (N,) long,
the module index of each row (``-1``: no adapter), the host output ``h``: (N, ..., out) and
the modules' inputs ``xs`` (one per module), and returns the delta: (N, ..., out), zero on rows
with ``-1``. :func:`loop_route` is the generic fallback (one masked call per distinct adapter);
the batched kernels run without a Python loop over adapters, from weights stacked once and
cached per host (:class:`~adapterkit.core.stack_cache.StackCache`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .stack_cache import StackCache

#: LoRA uses dense slots while ``T > 1`` and ``T * (K - 1) * r <= DENSE_BUDGET`` (T tokens per
#: row, r the largest rank): the work dense slots waste on other rows' adapters grows with all
#: three, while the per-row ``bmm`` of the gather path costs little for one token (decoding) and
#: is slower than one large matmul for many; measured on CPU, see docs/composition.md
DENSE_BUDGET = 512
STRATEGIES = ("auto", "dense", "gather", "loop")


def _take(t: Any, idx: torch.Tensor) -> Any:
    return t.index_select(0, idx) if isinstance(t, torch.Tensor) and t.dim() > 0 else t


def loop_route(modules: Sequence[Any], rows: torch.Tensor, h: torch.Tensor, xs: Sequence[Any],
               base: nn.Module) -> torch.Tensor:
    """Generic: for each adapter k, ``delta_k`` on the rows ``rows == k`` only, scattered back."""
    out = torch.zeros_like(h)
    for k, mod in enumerate(modules):
        idx = (rows == k).nonzero().squeeze(1)
        if idx.numel():
            out = out.index_copy(0, idx, mod.delta(h.index_select(0, idx), _take(xs[k], idx), base))
    return out


_TRAINING = operator.attrgetter("training")


def _bmm_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the gather path runs ``bmm`` in: float32 for bfloat16/float16 on CPU, where
    half-precision batched matmuls of these small shapes are several times slower."""
    if t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return t.dtype


def _row_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, 1, ..., 1, C) broadcasting against ``like``: (N, ..., C')."""
    return v.view(v.shape[0], *([1] * (like.dim() - 2)), v.shape[-1])


def _slots(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Row -> stack index, with ``-1`` mapped to the zero entry ``k`` of a (K + 1, ...) stack."""
    return torch.where(rows < 0, torch.full_like(rows, k), rows)


# -- LoRA ------------------------------------------------------------------------------------------
def _lora_batchable(modules: Sequence[Any], xs: Sequence[Any], base: nn.Module, n: int) -> bool:
    x = xs[0]
    if isinstance(base, (nn.Embedding, nn.Conv2d)) or not isinstance(x, torch.Tensor):
        return False
    if x.dim() < 2 or x.shape[0] != n or set(map(id, xs)) != {id(x)}:
        return False
    # dropout draws per adapter: the loop keeps each adapter's own
    return not (any(map(_TRAINING, modules))
                and any(isinstance(m.drop, nn.Dropout) for m in modules))


def lora_route(modules: Sequence[Any], rows: torch.Tensor, h: torch.Tensor, xs: Sequence[Any],
               base: nn.Module, cache: StackCache | None = None,
               strategy: str | None = None) -> torch.Tensor:
    """Batched LoRA. With ``s_k`` the scale and ``A_k``: (r_k, in), ``B_k``: (out, r_k):

    - ``dense``: ``A_cat = [A_1; ...; A_K]``: (R, in), ``B_cat = [B_1 ... B_K]``: (out, R),
      ``R = sum r_k``; ``delta = ((x @ A_cat^T) * M) @ B_cat^T`` with the per-row mask ``M``:
      (N, R) equal to ``s_k`` on the slot block of the row's adapter k and 0 elsewhere.
    - ``gather``: stacks ``A^T``: (K+1, in, r) and ``s B^T``: (K+1, r, out) (ranks zero-padded to
      the largest, entry K zero), gathered per row and applied with two ``torch.bmm``.
    """
    x = xs[0]
    if strategy == "loop" or not _lora_batchable(modules, xs, base, rows.shape[0]):
        return loop_route(modules, rows, h, xs, base)
    cache = cache if cache is not None else StackCache()
    if strategy in (None, "auto"):
        tokens = x.numel() // (x.shape[0] * x.shape[-1])
        strategy = "gather" if tokens == 1 else choose(  # decoding: no look at the K ranks
            len(modules), tokens, max(m.lora_A.shape[0] for m in modules))
    fn = _lora_dense if strategy == "dense" else _lora_gather
    return fn(modules, rows, x, cache).to(h.dtype)


def choose(k: int, tokens: int, r: int) -> str:
    """``"dense"`` or ``"gather"`` for K adapters, ``tokens`` per row and rank ``r``."""
    return "dense" if tokens > 1 and tokens * (k - 1) * r <= DENSE_BUDGET else "gather"


def _lora_dense(modules: Sequence[Any], rows: torch.Tensor, x: torch.Tensor,
                cache: StackCache) -> torch.Tensor:
    def stacks() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([m.lora_A for m in modules], 0),  # (R, in)
                torch.cat([m.lora_B for m in modules], 1))  # (out, R)

    (a, b), cached = cache.stacks("lora-dense", modules, stacks)

    def mask() -> torch.Tensor:  # (N, R)
        ranks = torch.tensor([m.lora_A.shape[0] for m in modules], device=rows.device)
        slot = torch.repeat_interleave(torch.arange(len(modules), device=rows.device), ranks)
        scale = torch.tensor([float(m.scale) for m in modules], dtype=a.dtype, device=a.device)
        return (rows[:, None] == slot[None, :]).to(a.dtype) * torch.repeat_interleave(scale, ranks)

    m = cache.derived("lora-mask", (rows, a), mask) if cached else mask()
    t = F.linear(x.to(a.dtype), a)  # (N, ..., R)
    return F.linear(t * _row_view(m, t), b)  # (N, ..., out)


def _lora_gather(modules: Sequence[Any], rows: torch.Tensor, x: torch.Tensor,
                 cache: StackCache) -> torch.Tensor:
    def stacks() -> tuple[torch.Tensor, torch.Tensor]:
        r = max(m.lora_A.shape[0] for m in modules)
        a0, b0 = modules[0].lora_A, modules[0].lora_B
        dtype = _bmm_dtype(a0)
        at = [F.pad(m.lora_A.t(), (0, r - m.lora_A.shape[0])).to(dtype) for m in modules]
        bt = [F.pad(m.lora_B.t().to(dtype) * m.scale, (0, 0, 0, r - m.lora_B.shape[1]))
              for m in modules]
        at.append(a0.new_zeros(a0.shape[1], r, dtype=dtype))
        bt.append(b0.new_zeros(r, b0.shape[0], dtype=dtype))
        return torch.stack(at), torch.stack(bt)  # (K+1, in, r), (K+1, r, out)

    (at, bt), cached = cache.stacks("lora-gather", modules, stacks)

    def gathered() -> tuple[torch.Tensor, torch.Tensor]:
        idx = _slots(rows, len(modules))
        return at.index_select(0, idx), bt.index_select(0, idx)  # (N, in, r), (N, r, out)

    a_rows, b_rows = cache.derived("lora-rows", (rows, at), gathered) if cached else gathered()
    n = rows.shape[0]
    x3 = x.to(at.dtype).reshape(n, -1, x.shape[-1])  # (N, T, in)
    d = torch.bmm(torch.bmm(x3, a_rows), b_rows)  # (N, T, r) -> (N, T, out)
    return d.reshape(*x.shape[:-1], d.shape[-1])


# -- IA3 -------------------------------------------------------------------------------------------
def ia3_route(modules: Sequence[Any], rows: torch.Tensor, h: torch.Tensor, xs: Sequence[Any],
              base: nn.Module, cache: StackCache | None = None,
              strategy: str | None = None) -> torch.Tensor:
    """Batched (IA)^3: the offsets ``l_k - 1`` stacked to (K+1, n) (entry K zero) and gathered
    per row. Output scaling: ``delta = h * (l - 1)``; input scaling: ``W (x * (l - 1))``."""
    ff = {m.feedforward for m in modules}
    x = xs[0]
    if strategy == "loop" or len(ff) > 1 or h.shape[0] != rows.shape[0] or (
            ff == {True} and any(y is not x for y in xs)):
        return loop_route(modules, rows, h, xs, base)
    cache = cache if cache is not None else StackCache()

    def stack() -> torch.Tensor:
        offsets = [m.ia3_offset for m in modules]
        return torch.stack([*offsets, torch.zeros_like(offsets[0])])  # (K+1, n)

    offsets, cached = cache.stacks("ia3", modules, stack)
    gather = lambda: offsets.index_select(0, _slots(rows, len(modules)))  # noqa: E731
    off = cache.derived("ia3-rows", (rows, offsets), gather) if cached else gather()  # (N, n)
    if ff == {False}:
        return (h * _row_view(off, h)).to(h.dtype)
    from .sites import dense_weight

    scaled = x.to(off.dtype) * _row_view(off, x)
    return F.linear(scaled, dense_weight(base).to(off.dtype)).to(h.dtype)


# -- bottleneck ------------------------------------------------------------------------------------
def _bottleneck_batchable(modules: Sequence[Any], xs: Sequence[Any], h: torch.Tensor,
                          n: int) -> bool:
    first = modules[0]
    same = all(m.series == first.series and repr(m.act) == repr(first.act)
               and repr(m.norm) == repr(first.norm) and m.down.weight.shape == first.down.weight.shape
               for m in modules)
    if not same or h.shape[0] != n:
        return False
    if any(getattr(m, "orig_norm", None) is not None for m in modules):
        return False  # AdapterHub's original_ln_before reads LN(h + x): the loop runs it
    return first.series or all(y is xs[0] and isinstance(y, torch.Tensor) for y in xs)


def bottleneck_route(modules: Sequence[Any], rows: torch.Tensor, h: torch.Tensor,
                     xs: Sequence[Any], base: nn.Module, cache: StackCache | None = None,
                     strategy: str | None = None) -> torch.Tensor:
    """Batched bottleneck: per row, ``s * (up(act(down(LN(u)))))`` with the row's gathered
    ``down``: (in -> m), ``up``: (m -> out), LayerNorm affine and scaling ``s`` (entry K zero),
    as two ``torch.baddbmm`` over (N, T, in) -> (N, T, m) -> (N, T, out)."""
    if strategy == "loop" or not _bottleneck_batchable(modules, xs, h, rows.shape[0]):
        return loop_route(modules, rows, h, xs, base)
    cache = cache if cache is not None else StackCache()
    stacks, cached = cache.stacks("bottleneck", modules, lambda: _bottleneck_stacks(modules))
    gather = lambda: [s.index_select(0, _slots(rows, len(modules))) for s in stacks]  # noqa: E731
    wd, bd, wu, bu, scale, *ln = cache.derived("bn-rows", (rows, stacks[0]), gather) if cached \
        else gather()
    first = modules[0]
    u = (h if first.series else xs[0]).to(wd.dtype)
    n, width = rows.shape[0], u.shape[-1]
    if ln:
        u = F.layer_norm(u, (width,), eps=first.norm.eps)
        u = u * _row_view(ln[0], u) + _row_view(ln[1], u)
    u3 = u.reshape(n, -1, width)  # (N, T, in)
    z = first.act(torch.baddbmm(bd.unsqueeze(1), u3, wd))  # (N, T, m)
    out = torch.baddbmm(bu.unsqueeze(1), z, wu) * scale.view(n, 1, 1)  # (N, T, out)
    return out.reshape(*h.shape[:-1], out.shape[-1]).to(h.dtype)


def _bottleneck_stacks(modules: Sequence[Any]) -> list[torch.Tensor]:
    """[down^T (K+1, in, m), down bias (K+1, m), up^T (K+1, m, out), up bias (K+1, out),
    scaling (K+1,), (LayerNorm weight, bias (K+1, in))]; entry K is zero."""
    def stack(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([*ts, torch.zeros_like(ts[0])])

    w = modules[0].down.weight
    out = [stack([m.down.weight.t() for m in modules]), stack([m.down.bias for m in modules]),
           stack([m.up.weight.t() for m in modules]), stack([m.up.bias for m in modules]),
           torch.tensor([float(m.scaling) for m in modules] + [0.0], dtype=w.dtype, device=w.device)]
    if isinstance(modules[0].norm, nn.LayerNorm):
        out += [stack([m.norm.weight for m in modules]), stack([m.norm.bias for m in modules])]
    return out
