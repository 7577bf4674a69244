"""The contract between a method and the executor.

A method is a frozen config dataclass plus a :class:`MethodSpec` that says what kind of method it
is, where it attaches (``find_sites``) and how to build its module for one site (``build``).

Every adapter module computes an *additive change* to the output ``h`` of the module it is
attached to (its host): ``h' = h + delta(h, x)`` where ``x`` is the host's input (or, for
parallel residual adapters, the input of another module captured by a tap). Composition blocks
are written once against this primitive.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .sites import SiteFinder


#: the child module of every host under which its adapters live
SLOT = "adapterkit"


class MethodKind(str, enum.Enum):
    WEIGHT_DELTA = "weight_delta"  # delta depends on the host's input only; mergeable
    RESIDUAL = "residual"  # bottleneck-style module added at a sublayer output
    PREFIX = "prefix"  # key/value prefixes at attention
    PROMPT = "prompt"  # soft tokens at the input
    FUSION = "fusion"  # AdapterFusion layer: runs only inside a Fuse composition block
    ROUTER = "router"  # a Mixture's gates: run only inside a Mixture composition block


@dataclass(frozen=True)
class Site:
    """Where one adapter module lives.

    ``host`` is the module path whose output the adapter changes (and under which its parameters
    are stored); ``input`` names a module whose *input* feeds the adapter instead of the host's
    own, as parallel adapters need. ``role`` is the layout role that found it, if any. ``norm``
    names the sublayer's own post-residual LayerNorm, for adapters that read ``LN(h + x)``.
    """

    host: str
    input: str | None = None
    role: str | None = None
    norm: str | None = None


class Tap:
    """Holds the latest input of one module, written by a forward pre-hook."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Tap:
        """A copy starts empty: the held input belongs to the last forward of the original."""
        new = Tap()
        memo[id(self)] = new
        return new


class AdapterModule(nn.Module):
    """Base of every adapter module; adapter parameters are found by this type."""

    #: set by each class; a method union's module sets its own, from its parts
    kind: MethodKind
    #: True when ``delta_weight``/``delta_bias`` read the base weight (IA3, DoRA): merging then
    #: keeps the exact deltas it added so that unmerging subtracts them, not a recomputation
    #: from the already merged weight
    delta_reads_base: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.merged = False
        self.tap: Tap | None = None
        self.merge_stash: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module,
                delta: bool = False) -> torch.Tensor:
        """What the executor calls, through the module call so that per-module hooks (FSDP2
        units, DeepSpeed ZeRO-3 gathering) see this module's parameters: ``apply_delta`` or,
        with ``delta``, ``delta``."""
        return self.delta(h, x, base) if delta else self.apply_delta(h, x, base)

    def apply_delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """``h + delta(h, x, base)``: what a single active adapter does at its host (methods
        override it only to fuse the addition into their kernel). Named apart from
        ``nn.Module.apply``, which ``model.apply(fn)`` calls on every submodule."""
        return h + self.delta(h, x, base)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """Additive change to the host output ``h`` given the adapter's input ``x``: the host's
        input, or for a module with a tap the tapped input (the executor passes it)."""
        raise NotImplementedError

    @classmethod
    def route_deltas(cls, modules: Sequence[AdapterModule], rows: torch.Tensor, h: torch.Tensor,
                     xs: Sequence[Any], base: nn.Module, cache: Any = None,
                     strategy: str | None = None) -> torch.Tensor:
        """Per-example routing primitive: the deltas of ``modules`` (K modules of this class at
        one host) where row i of the batch runs ``modules[rows[i]]`` (``rows``: (N,) long,
        ``-1``: none) on ``h``: (N, ..., out) and ``xs[k]`` (module k's input); (N, ..., out).
        This generic version calls ``delta`` once per distinct module on its rows; methods
        override it with a batched kernel (``cache``: the host's ``StackCache``)."""
        from .kernels import loop_route

        return loop_route(modules, rows, h, xs, base)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        """The change to ``base.weight`` (same shape and layout); weight-delta methods only."""
        raise NotImplementedError(f"{type(self).__name__} has no weight delta")

    def delta_bias(self, base: nn.Module) -> torch.Tensor | None:
        """The change to ``base.bias`` that merging adds with ``delta_weight``; None: no change."""
        return None

    def attached(self, host: nn.Module) -> None:
        """Called once the module sits in its host's slot. A method that rewrites its host's
        weights (PiSSA's residual base) does it here, never while its modules are planned."""

    def detached(self, host: nn.Module) -> None:
        """Called when the module leaves its host's slot: undoes what ``attached`` did."""


@dataclass(frozen=True)
class MethodSpec:
    """Registry entry of one method."""

    name: str
    config_cls: type
    kind: MethodKind
    mergeable: bool
    find_sites: Callable[[Any, SiteFinder], list[Site]]
    build: Callable[[Any, Site, SiteFinder], AdapterModule]
    paper: str
    sites_used: str
    routable: bool = False  # set once the method runs under per-example Route
    generate: bool = True
    #: for a method whose kind and capabilities depend on its config (a method union): the spec
    #: of one config, which ``spec_of`` gives (None: this spec serves every config)
    specialize: Callable[[Any], MethodSpec] | None = None
    #: why a config of this method cannot be merged, for ``kit.merge``'s error ("": the kind)
    merge_note: str = ""
    #: the config as it is recorded and saved, completed from what it reads (EigenLoRA: the
    #: digest of its basis file); None: the config as given
    resolve: Callable[[Any, SiteFinder], Any] | None = None
