"""From a composition value to the executor's nodes, with every check that needs the kit's
adapters: unknown names, fusion layers, merged adapters, methods that cannot be routed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.base import MethodKind
from ..core.kernels import STRATEGIES
from ..methods.inputs import InputAdapterModule
from .blocks import (
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
from .nodes import AverageNode, BatchSplitNode, FuseNode, Identity, Leaf, Node, SplitNode, StackNode
from .route import RouteNode
from .route_inputs import route_inputs
from .routed_blocks import Arrow, Mixture
from .routed_compile import build_routed, check_routed, routed_inputs

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
    #: what the executor's top-level pre-hook runs (objects with ``prepare(model, kwargs)``): the
    #: active input-level adapter modules (prompt, prefix), or a Route's ``RoutedInputs``
    inputs: tuple[Any, ...] = ()

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


def _input_modules(kit: AdapterKit, plan: Plan) -> tuple[Any, ...]:
    """The input-level modules (found by type: a method union holds one beside its host modules)
    of the adapters in ``plan``: they change the model's inputs, so they may only be a plain name
    or in a Stack of names, one adapter at a time, or a Route's entries (one per row, see
    ``route_inputs``)."""
    found = {n: mods for n in plan.names if (mods := tuple(
        m for m in kit.record(n).modules.values() if isinstance(m, InputAdapterModule)))}
    if not found:
        return ()
    if isinstance(plan.composition, Route):
        return route_inputs(kit, plan.composition, found)
    if not plan.flat:
        raise CompositionError(
            f"{list(found)} are prompt/prefix adapters: they change the model's inputs for every "
            "row, so they run only as a plain name or in a Stack of names")
    if len(found) > 1:
        raise CompositionError(
            f"only one prompt/prefix adapter can be active at a time, got {list(found)}")
    return next(iter(found.values()))


def compile_plan(kit: AdapterKit, comp: Composition | None, strategy: str | None = None) -> Plan:
    """Check ``comp`` against the kit's adapters and compile it; raises CompositionError."""
    if strategy is not None and strategy not in STRATEGIES:
        raise CompositionError(f"unknown route strategy {strategy!r}; use one of {STRATEGIES}")
    if comp is None:
        return Plan(None, None, ())
    names = comp.leaves() if isinstance(comp, Block) else (comp,)
    _check_names(kit, comp)  # unknown names raise here
    check_routed(kit, comp)
    for node in walk(comp):
        if isinstance(node, Route):
            _check_routable(kit, node)
    replicas = len(comp.children) if isinstance(comp, Parallel) else 1
    plan = Plan(comp, None, names, replicas)
    _check_unmerged(kit, plan)
    inputs = _input_modules(kit, plan) + routed_inputs(kit, comp)
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
    if isinstance(comp, (Route, Mixture, Arrow)):  # blocks that choose adapters per row or token
        return _build_route(kit, comp, strategy) if isinstance(comp, Route) else build_routed(kit, comp)
    raise CompositionError(f"unknown block {comp!r}")


def _build_route(kit: AdapterKit, route: Route, strategy: str | None) -> Node:
    """The route at the hosts: entries that change nothing there (prompt/prefix adapters, which
    the input pre-hook runs) count as ``__base__``; an entry that is one adapter there (a name,
    or a Stack of a prompt/prefix adapter and one name) runs as that name, so rows of equal
    methods share a batched kernel."""
    entries: list[Composition] = []
    nodes: list[str | Node] = []
    index: dict[Composition, int] = {}
    rows = []
    for entry in route.children:
        if entry != BASE and entry not in index:
            node = _build(kit, entry, strategy)
            index[entry] = -1 if isinstance(node, Identity) else len(entries)
            if not isinstance(node, Identity):
                entries.append(entry)
                nodes.append(node.name if isinstance(node, Leaf) else node)
        rows.append(-1 if entry == BASE else index[entry])
    if not entries:
        return Identity()
    if len(entries) == 1 and -1 not in rows:  # one adapter for the whole batch: as activate
        return _build(kit, entries[0], strategy)
    return RouteNode(entries, nodes, rows, None if strategy == "auto" else strategy)
