"""Compositions: plain, immutable, serialisable values passed to ``kit.activate``.

A composition is an adapter name (``str``) or a block over children::

    Stack("lang_de", Fuse("a", "b", name="ab"))     # one after the other
    Average("a", "b", weights=[0.7, 0.3])           # h + 0.7 delta_a + 0.3 delta_b
    Route(["a", "b", "__base__"])                   # one adapter per example of the batch

Which block may hold which is the data table :data:`NESTING`; an illegal nesting raises
:class:`CompositionError` when the value is built. What each block computes, per method kind, is
the data table :data:`SEMANTICS`; ``scripts/gen_docs.py`` renders both into
``docs/composition.md``. ``to_json`` / :func:`from_json` round-trip every value exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Union, cast

from ..errors import AdapterError

BASE = "__base__"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
NAME = "name"  # the NESTING entry for an adapter name

#: parent block -> the children it may hold ("name": an adapter name). Blocks that no parent
#: lists (Parallel, Route) are legal only at the top level.
NESTING: dict[str, tuple[str, ...]] = {
    "Stack": (NAME, "Fuse", "Split", "BatchSplit", "Average", "Mixture", "Arrow"),
    "Fuse": (NAME, "Stack"),
    "Split": (NAME, "Stack", "Fuse", "Split", "BatchSplit", "Average", "Mixture", "Arrow"),
    "BatchSplit": (NAME, "Stack", "Fuse", "Split", "BatchSplit", "Average", "Mixture", "Arrow"),
    "Average": (NAME, "Stack", "Fuse", "Split", "BatchSplit", "Mixture", "Arrow"),
    "Parallel": (NAME, "Stack", "Fuse", "Split", "BatchSplit", "Average", "Mixture", "Arrow"),
    "Route": (NAME, BASE, "Stack", "Fuse", "Split", "Average", "Mixture", "Arrow"),
    "Mixture": (NAME,),
    "Arrow": (NAME,),
}

#: block -> (weight-delta adapters, residual adapters, any child) semantics at one host with
#: output ``h`` and input ``x``; ``delta_i`` is child i's additive change.
SEMANTICS: dict[str, tuple[str, str, str]] = {
    "Stack": (
        "run before residual children (they change the host's weight); deltas add: "
        "`h + sum_i delta_i(x)`; IA3 output scaling multiplies what precedes it: `h * l`",
        "in order, each on the previous output: `h <- h + delta_i(h, x)`",
        "weight-delta names first (in order), then the other children in order",
    ),
    "Fuse": (
        "`o_i = h + delta_i(x)`", "`o_i = h + delta_i(h, x)`",
        "`a = softmax_i(Q(h) . K(o_i) / T)`, output `sum_i a_i V(o_i)`; V starts as the identity",
    ),
    "Average": (
        "`h + sum_i w_i delta_i(x)`", "`h + sum_i w_i delta_i(h, x)`, every delta on the same `h`",
        "weights as given (not normalised; default `1/n`); one child with weight 1 is that child",
    ),
    "Split": (
        "positions `< split_index` of dim 1 run child 0, the rest child 1",
        "the same (each child sees only its positions)",
        "(batch, seq, features) hosts only; with a KV cache, positions count within each call",
    ),
    "BatchSplit": (
        "rows `[s_0, s_0 + s_1, ...)` of the batch run child 0, 1, ...",
        "the same", "`sum(batch_sizes)` must divide the host's batch (k rows per example)",
    ),
    "Parallel": (
        "the model inputs are repeated n times along the batch; replica i runs child i",
        "the same", "top level only; the output has batch n*B, `kit.split_parallel` splits it",
    ),
    "Route": (
        "example b runs `ids[b]` (`__base__`: no adapter)",
        "the same", "top level only; batched kernels per method (see Routing)",
    ),
    "Mixture": (
        "`h + sum_i g_i(x) delta_i(x)`, one batched kernel over stacked LoRA experts",
        "`h + sum_i g_i(x) delta_i(h, x)`, every delta on the same `h`",
        "`g = softmax(W x + b)` per token (or per sequence), top-k renormalised; "
        "the router `name` trains (`kit.train_router`)",
    ),
    "Arrow": (
        "`h + sum_i g_i(x) delta_i(x)`, `g = softmax(topk_i abs(<x, v_i>) / T)`, "
        "`v_i` the top right singular vector of expert i's `B A` at this host",
        "not accepted (prototypes need a weight delta)",
        "per token, no training and no task ids",
    ),
}


class CompositionError(AdapterError, ValueError):
    """An illegal composition: bad nesting, arity, option, or a combination a method cannot run."""


Child = Union[str, "Block"]


def _kind(child: object) -> str:
    if isinstance(child, Block):
        return type(child).__name__
    if child == BASE:
        return BASE
    if isinstance(child, str):
        return NAME
    raise CompositionError(f"a composition child must be an adapter name or a block, got {child!r}")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise CompositionError(f"bad adapter name {name!r} in a composition")


class Block:
    """Base of the blocks: an immutable tuple of children plus options."""

    __slots__ = ("children",)
    children: tuple[Child, ...]
    MIN_CHILDREN: ClassVar[int] = 1

    def __init__(self, *children: Child) -> None:
        self._set_children(children)

    def _set_children(self, children: Sequence[Child]) -> None:
        block = type(self).__name__
        if len(children) < self.MIN_CHILDREN:
            raise CompositionError(f"{block} needs at least {self.MIN_CHILDREN} child(ren), "
                                   f"got {len(children)}")
        for child in children:
            kind = _kind(child)
            if kind not in NESTING[block]:
                where = ("only at the top level" if all(kind not in v for v in NESTING.values())
                         else f"inside {[b for b, v in NESTING.items() if kind in v]}")
                raise CompositionError(
                    f"{block} cannot hold {kind if kind != NAME else 'an adapter name'} "
                    f"({child!r}); {block} holds {list(NESTING[block])}; {kind} is legal {where}")
            if kind == NAME and isinstance(child, str):
                _check_name(child)
        object.__setattr__(self, "children", tuple(children))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple:  # copy and pickle through the JSON form
        return from_json, (self.to_json(),)

    def options(self) -> dict[str, Any]:
        """The block's options (JSON-ready)."""
        return {}

    def _key(self) -> tuple:
        return (type(self).__name__, self.children,
                tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in self.options().items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Block) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = [repr(c) for c in self.children] + [f"{k}={v!r}" for k, v in self.options().items()]
        return f"{type(self).__name__}({', '.join(args)})"

    def leaves(self) -> tuple[str, ...]:
        """Every adapter name used (fusion names included), once each, in order."""
        return tuple(dict.fromkeys(_leaves(self)))

    def to_json(self) -> dict[str, Any]:
        return {"block": type(self).__name__,
                "children": [c.to_json() if isinstance(c, Block) else c for c in self.children],
                **self.options()}


def _leaves(node: Child) -> Iterator[str]:
    if isinstance(node, str):
        if node != BASE:
            yield node
        return
    if isinstance(node, (Fuse, Mixture)):
        yield node.name
    for child in node.children:
        yield from _leaves(child)


def walk(node: Child) -> Iterator[Child]:
    """``node`` and every block and name below it, depth first."""
    yield node
    if isinstance(node, Block):
        for child in node.children:
            yield from walk(child)


class Stack(Block):
    """Children one after the other at every host (see :data:`SEMANTICS`)."""

    __slots__ = ()


class Parallel(Block):
    """The same input through every child; the model output has batch ``n * B`` (replica-major:
    rows ``[i*B, (i+1)*B)`` are child i's); ``kit.split_parallel(output)`` gives n outputs."""

    __slots__ = ()


class Fuse(Block):
    """AdapterFusion (Pfeiffer et al. 2021, arXiv:2005.00247) over the children's outputs, with
    the fusion layer ``name`` (default ``fuse_<leaf names>``), created by ``kit.add_fusion``."""

    __slots__ = ("name",)
    name: str

    def __init__(self, *children: Child, name: str | None = None) -> None:
        self._set_children(children)
        name = name if name is not None else "fuse_" + "_".join(self.fused())
        _check_name(name)
        object.__setattr__(self, "name", name)

    def options(self) -> dict[str, Any]:
        return {"name": self.name}

    def fused(self) -> tuple[str, ...]:
        """The adapter names below this fusion."""
        return tuple(dict.fromkeys(n for c in self.children for n in _leaves(c)))


class Average(Block):
    """``h + sum_i w_i delta_i``; weights are used as given, default ``1/n`` each."""

    __slots__ = ("weights",)
    weights: tuple[float, ...]

    def __init__(self, *children: Child, weights: Sequence[float] | None = None) -> None:
        self._set_children(children)
        n = len(children)
        w = tuple(float(v) for v in weights) if weights is not None else (1.0 / n,) * n
        if len(w) != n or not all(math.isfinite(v) for v in w):
            raise CompositionError(f"Average needs {n} finite weights, got {weights!r}")
        object.__setattr__(self, "weights", w)

    def options(self) -> dict[str, Any]:
        return {"weights": list(self.weights)}


class Split(Block):
    """Sequence positions ``< split_index`` run ``a``, the others ``b``."""

    __slots__ = ("split_index",)
    split_index: int
    MIN_CHILDREN = 2

    def __init__(self, a: Child, b: Child, split_index: int) -> None:
        self._set_children((a, b))
        if isinstance(split_index, bool) or not isinstance(split_index, int) or split_index < 0:
            raise CompositionError(f"Split.split_index must be an integer >= 0, got {split_index!r}")
        object.__setattr__(self, "split_index", split_index)

    def options(self) -> dict[str, Any]:
        return {"split_index": self.split_index}


class BatchSplit(Block):
    """Contiguous slices of the batch: the first ``batch_sizes[0]`` rows run child 0, ..."""

    __slots__ = ("batch_sizes",)
    batch_sizes: tuple[int, ...]

    def __init__(self, *children: Child, batch_sizes: Sequence[int]) -> None:
        self._set_children(children)
        sizes = tuple(batch_sizes)
        if len(sizes) != len(children) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise CompositionError(
                f"BatchSplit needs {len(children)} positive integer batch_sizes, got {batch_sizes!r}")
        object.__setattr__(self, "batch_sizes", sizes)

    def options(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes)}


class Route(Block):
    """One entry per example of the batch: an adapter name, ``"__base__"`` or a composition."""

    __slots__ = ()

    def __init__(self, ids: Sequence[Child]) -> None:
        if isinstance(ids, (str, Block)):
            raise CompositionError(f"Route takes a sequence with one entry per example, got {ids!r}")
        self._set_children(tuple(ids))

    def __repr__(self) -> str:
        return f"Route({list(self.children)!r})"

    def to_json(self) -> dict[str, Any]:
        return {"block": "Route",
                "ids": [c.to_json() if isinstance(c, Block) else c for c in self.children]}


BLOCKS: dict[str, type[Block]] = {c.__name__: c for c in (
    Stack, Fuse, Average, Split, BatchSplit, Parallel, Route)}

Composition = str | Block


def as_composition(value: str | Sequence[str] | Block | None) -> Composition | None:
    """``None``/``"__base__"``: nothing; a name; a sequence of names: their Stack; a block."""
    if value is None or value == BASE:
        return None
    if isinstance(value, Block):
        return value
    if isinstance(value, str):
        _check_name(value)
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return Stack(*value) if value else None
    raise CompositionError(f"cannot activate {value!r}: pass an adapter name, a list of names, "
                           f"a composition block ({', '.join(BLOCKS)}) or None")


def to_json(value: Composition | None) -> Any:
    """JSON-ready form: a name, ``None``, or ``{"block": ..., "children": [...], **options}``."""
    return value.to_json() if isinstance(value, Block) else value


def from_json(data: Any) -> Composition | None:
    """Inverse of :func:`to_json`."""
    if data is None or isinstance(data, str):
        return data
    if not isinstance(data, dict) or data.get("block") not in BLOCKS:
        raise CompositionError(f"not a composition: {data!r}; blocks: {list(BLOCKS)}")
    opts = {k: v for k, v in data.items() if k not in ("block", "children", "ids")}
    # a null entry is no child: the block's own check rejects it with a CompositionError
    if data["block"] == "Route":
        return Route(cast("list[Child]", [from_json(c) for c in data.get("ids", [])]))
    children = cast("list[Child]", [from_json(c) for c in data.get("children", [])])
    try:
        return BLOCKS[data["block"]](*children, **opts)
    except TypeError as exc:
        raise CompositionError(f"bad options for {data['block']}: {exc}") from None


# the blocks that choose their adapters subclass Block, so they are defined after it
from .routed_blocks import Arrow, Mixture  # noqa: E402

BLOCKS.update({"Mixture": Mixture, "Arrow": Arrow})
