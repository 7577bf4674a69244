"""Compiling ``Mixture`` and ``Arrow`` blocks: the checks that need the kit's adapters (the
router exists and fits the block, experts of the right kind, sequence routing only where rows
and positions are whole) and their nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.base import MethodKind
from .arrow import ArrowNode
from .blocks import BASE, BatchSplit, Composition, CompositionError, Parallel, Route, Split, walk
from .mixture import MixtureNode, sequence_state
from .nodes import Node
from .routed_blocks import Arrow, Mixture

if TYPE_CHECKING:
    from ..kit import AdapterKit

#: the layout families of causal decoders (sequence routing pools causally there)
CAUSAL_FAMILIES = ("gpt2", "llama")
_SLICING = (Route, BatchSplit, Split, Parallel)


def _check_router(kit: AdapterKit, mix: Mixture) -> None:
    record = kit._records.get(mix.name)
    if record is None:
        raise CompositionError(f"no router named {mix.name!r}: create it with "
                               f"kit.add_router({mix!r}) or kit.train_router(...)")
    if record.spec.kind is not MethodKind.ROUTER:
        raise CompositionError(f"{mix.name!r} is a {record.spec.name} adapter, not a Mixture router")
    cfg = record.config
    want = (tuple(mix.children), mix.router, mix.top_k)
    have = (tuple(cfg.experts), cfg.router, cfg.top_k)
    if want != have:
        raise CompositionError(
            f"router {mix.name!r} was built for experts {list(have[0])}, router={have[1]!r}, "
            f"top_k={have[2]!r}; the block asks for experts {list(want[0])}, router={want[1]!r}, "
            f"top_k={want[2]!r}")


def _check_arrow(kit: AdapterKit, arrow: Arrow) -> None:
    for name in arrow.children:
        spec = kit.record(str(name)).spec
        if spec.kind is not MethodKind.WEIGHT_DELTA:
            raise CompositionError(
                f"Arrow experts are weight-delta adapters (LoRA, DoRA, ...): their prototypes "
                f"come from their weight deltas; {name!r} is a {spec.name} ({spec.kind.value}) "
                "adapter")


def _check_sequence_places(comp: Composition) -> None:
    """Sequence routing reads the attention mask of the whole batch: refused below blocks
    that give a host only some of the rows or positions."""
    for node in walk(comp):
        if isinstance(node, _SLICING) and any(
                isinstance(n, Mixture) and n.router == "sequence" for n in walk(node)):
            raise CompositionError(
                f"a sequence-routed Mixture runs at the top level or in a Stack or Average, not "
                f"under {type(node).__name__} (it pools over whole rows); use router='token'")


def check_routed(kit: AdapterKit, comp: Composition) -> None:
    """Every check of the Mixture and Arrow blocks in ``comp``; raises CompositionError."""
    for node in walk(comp):
        if isinstance(node, str) and node != BASE:
            spec = kit.record(node).spec
            if spec.kind is MethodKind.ROUTER:
                raise CompositionError(f"{node!r} is a Mixture router: it runs only in the "
                                       "Mixture block naming it (Mixture(..., name=...))")
        elif isinstance(node, Mixture):
            _check_router(kit, node)
        elif isinstance(node, Arrow):
            _check_arrow(kit, node)
    _check_sequence_places(comp)


def causal(kit: AdapterKit) -> bool:
    """Whether the kit's model is a causal decoder; encoder-decoder models are refused."""
    cfg = getattr(kit.model, "config", None)
    if getattr(cfg, "is_encoder_decoder", False):
        raise CompositionError("sequence routing is not supported on encoder-decoder models "
                               "(their encoder and decoder pool differently); use router='token'")
    family = kit.layout.family if kit.layout is not None else None
    return family in CAUSAL_FAMILIES or bool(getattr(cfg, "is_decoder", False))


def build_routed(kit: AdapterKit, comp: Mixture | Arrow) -> Node:
    if isinstance(comp, Arrow):
        return ArrowNode(tuple(str(c) for c in comp.children), comp.top_k, comp.temperature)
    seq = comp.router == "sequence"
    return MixtureNode(comp.name, comp.router, comp.top_k, comp.balance,
                       sequence_state(kit) if seq else None, causal(kit) if seq else False)


def routed_inputs(kit: AdapterKit, comp: Composition | None) -> tuple[Any, ...]:
    """The top-level pre-hook objects ``comp`` needs: the kit's sequence state when a Mixture
    routes per sequence."""
    if comp is None or not any(isinstance(n, Mixture) and n.router == "sequence"
                               for n in walk(comp)):
        return ()
    return (sequence_state(kit),)
