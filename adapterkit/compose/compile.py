"""From a composition value to the executor's nodes, with every check that needs the kit's
adapters: unknown names, fusion layers, merged adapters, methods that cannot be routed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..composition import (
    BASE,
    Average,
    BatchSplit,
    Block,
    Composition,
    CompositionError,
    Fuse,
    Parallel,
    Route,
    Split,
    Stack,
    walk,
)
from ..methods.base import AdapterModule, MethodKind
from .kernels import STRATEGIES
from .nodes import AverageNode, BatchSplitNode, FuseNode, Identity, Leaf, Node, SplitNode, StackNode
from .route import RouteNode

if TYPE_CHECKING:
    from ..kit import AdapterKit


@dataclass(frozen=True)
class Plan:
    """What the executor runs: the composition, its root node (None: the base model), every
    adapter and fusion name it uses, and the number of Parallel replicas (1: none)."""

    composition: Composition | None
    root: Node | None
    names: tuple[str, ...]
    replicas: int = 1
    #: the active input-level adapter modules (prompt, prefix), run by the executor's top-level
    #: pre-hook rather than at hosts
    inputs: tuple[AdapterModule, ...] = ()

    @property
    def flat(self) -> bool:
        """A name or a Stack of names: merged adapters may take part (they are in the weights)."""
        c = self.composition
        return c is None or isinstance(c, str) or (
            isinstance(c, Stack) and all(isinstance(n, str) for n in c.children))


def _check_names(kit: AdapterKit, comp: Composition) -> None:
    for node in walk(comp):
        if isinstance(node, str) and node != BASE:
            if kit.record(node).spec.kind is MethodKind.FUSION:
                raise CompositionError(
                    f"{node!r} is a fusion layer: it runs only as Fuse(..., name={node!r})")
        elif isinstance(node, Fuse):
            record = kit._records.get(node.name)
            if record is None:
                raise CompositionError(
                    f"no fusion layer named {node.name!r}: create it with kit.add_fusion({node!r}) "
                    "or kit.train_fusion(...)")
            if record.spec.kind is not MethodKind.FUSION:
                raise CompositionError(f"{node.name!r} is a {record.spec.name} adapter, not a fusion")
            if set(record.config.adapters) != set(node.fused()):
                raise CompositionError(
                    f"fusion {node.name!r} was built for {list(record.config.adapters)}, "
                    f"not {list(node.fused())}")


def _check_unmerged(kit: AdapterKit, plan: Plan) -> None:
    merged = [n for n in plan.names if kit.record(n).merged]
    if merged and not plan.flat:
        raise CompositionError(
            f"adapters {merged} are merged into the base weights, so they would act on every "
            f"row and at full weight in {plan.composition!r}; unmerge them first")


def _check_routable(kit: AdapterKit, route: Route) -> None:
    bad = sorted({kit.record(n).spec.name for n in route.leaves()
                  if not kit.record(n).spec.routable})
    if bad:
        raise CompositionError(
            f"methods {bad} do not support per-example routing (routable=False in their "
            "MethodSpec; see adapterkit.methods())")


INPUT_KINDS = (MethodKind.PROMPT, MethodKind.PREFIX)


def _input_modules(kit: AdapterKit, plan: Plan) -> tuple[AdapterModule, ...]:
    """The modules of the input-level adapters in ``plan``: they change the model's inputs, so
    they may only be a plain name or in a Stack of names, one at a time."""
    found = [n for n in plan.names if kit.record(n).spec.kind in INPUT_KINDS]
    if not found:
        return ()
    if not plan.flat:
        raise CompositionError(
            f"{found} are prompt/prefix adapters: they change the model's inputs for every row, "
            "so they run only as a plain name or in a Stack of names")
    if len(found) > 1:
        raise CompositionError(f"only one prompt/prefix adapter can be active at a time, got {found}")
    return tuple(kit.record(found[0]).modules.values())


def compile_plan(kit: AdapterKit, comp: Composition | None, strategy: str | None = None) -> Plan:
    """Check ``comp`` against the kit's adapters and compile it; raises CompositionError."""
    if strategy is not None and strategy not in STRATEGIES:
        raise CompositionError(f"unknown route strategy {strategy!r}; use one of {STRATEGIES}")
    if comp is None:
        return Plan(None, None, ())
    names = comp.leaves() if isinstance(comp, Block) else (comp,)
    _check_names(kit, comp)  # unknown names raise here
    for node in walk(comp):
        if isinstance(node, Route):
            _check_routable(kit, node)
    replicas = len(comp.children) if isinstance(comp, Parallel) else 1
    plan = Plan(comp, None, names, replicas)
    _check_unmerged(kit, plan)
    inputs = _input_modules(kit, plan)
    root = _build(kit, comp, strategy)
    return Plan(comp, None if isinstance(root, Identity) else root, names, replicas, inputs)


def _build(kit: AdapterKit, comp: Composition, strategy: str | None) -> Node:
    if isinstance(comp, str):  # input-level adapters run in the top-level pre-hook
        return Identity() if kit.record(comp).spec.kind in INPUT_KINDS else Leaf(comp)
    kids = [_build(kit, c, strategy) for c in comp.children] if not isinstance(comp, Route) else []
    if isinstance(comp, Stack):
        pairs = [(c, k) for c, k in zip(comp.children, kids) if not isinstance(k, Identity)]
        if not pairs:
            return Identity()
        first = [k for c, k in pairs if isinstance(c, str)
                 and kit.record(c).spec.kind is MethodKind.WEIGHT_DELTA]
        ordered = first + [k for _, k in pairs if k not in first]
        return ordered[0] if len(ordered) == 1 else StackNode(ordered)
    if isinstance(comp, Average):
        return AverageNode(kids, comp.weights)
    if isinstance(comp, Fuse):
        return FuseNode(kids, comp.name)
    if isinstance(comp, Split):
        return SplitNode(kids[0], kids[1], comp.split_index)
    if isinstance(comp, BatchSplit):
        return BatchSplitNode(kids, comp.batch_sizes, "BatchSplit")
    if isinstance(comp, Parallel):
        return BatchSplitNode(kids, (1,) * len(kids), "Parallel")
    if isinstance(comp, Route):
        return _build_route(kit, comp, strategy)
    raise CompositionError(f"unknown block {comp!r}")


def _build_route(kit: AdapterKit, route: Route, strategy: str | None) -> Node:
    entries: list[Composition] = []
    index: dict[Composition, int] = {}
    rows = []
    for entry in route.children:
        if entry == BASE:
            rows.append(-1)
            continue
        if entry not in index:
            index[entry] = len(entries)
            entries.append(entry)
        rows.append(index[entry])
    if not entries:
        return Identity()
    if len(entries) == 1 and -1 not in rows:  # one adapter for the whole batch: as activate
        return _build(kit, entries[0], strategy)
    nodes = [e if isinstance(e, str) else _build(kit, e, strategy) for e in entries]
    return RouteNode(entries, nodes, rows, None if strategy == "auto" else strategy)
