"""The composition half of :class:`~adapterkit.kit.AdapterKit` (a mixin): routing, fusion,
Parallel outputs and setups. ``kit.activate`` itself lives in ``kit.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from .blocks import Block, Child, Composition, CompositionError, Fuse, Route, as_composition, walk
from .compile import Plan, compile_plan
from .parallel import split_parallel

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from ..core.sites import SiteFinder
    from ..kit import AdapterKit
    from .executor import Executor


class Compositions:
    """Methods of AdapterKit that deal with compositions (see docs/composition.md)."""

    _exec: Executor
    _records: dict[str, AdapterRecord]
    model: nn.Module

    if TYPE_CHECKING:  # AdapterKit's own methods, which these call
        def activate(self, name: str | Sequence[str] | Block | None,
                     strategy: str | None = None) -> None: ...
        def add(self, name: str, config: Any) -> None: ...
        def finder(self) -> SiteFinder: ...

    @property
    def composition(self) -> Composition | None:
        """The active composition (an adapter name or a block), None for the base model."""
        plan = self._exec.state.plan
        return plan.composition if plan is not None else None

    @contextmanager
    def route(self, ids: Sequence[Child], strategy: str | None = None) -> Iterator[None]:
        """Inside the block, example ``b`` of every batch runs ``ids[b]`` (an adapter name,
        ``"__base__"`` or a composition); the previous composition comes back afterwards.
        Prompt and prefix adapters route too; a prompt changes the rows' sequence layout (see
        ``compose/route_inputs.py`` and docs/composition.md).

        ``strategy`` forces a LoRA kernel: ``"dense"`` slots, ``"gather"``ed weights, the
        generic ``"loop"``, or ``"auto"`` (default: by K, tokens per row and rank)."""
        before = self._exec.state.plan
        self._exec.set_plan(self._route_plan(ids, strategy))
        try:
            yield
        finally:
            self._exec.set_plan(before if before is not None else Plan(None, None, ()))

    def _route_plan(self, ids: Sequence[Child], strategy: str | None) -> Plan:
        """The compiled ``Route(ids)``, reused while the kit's adapters are unchanged (a server
        routes the same rows on every decoding step)."""
        def compile() -> Plan:
            return compile_plan(cast("AdapterKit", self), Route(ids), strategy)
        try:
            key = (tuple(ids), strategy)
            hash(key)
        except TypeError:  # an entry that is no composition: compiling names the problem
            return compile()
        return self._exec.route_plan(key, compile)

    def add_fusion(self, fuse: Fuse, temperature: float = 1.0) -> str:
        """Add the fusion layer of ``fuse`` (named ``fuse.name``) over its adapters; returns the
        name. The adapters must be in the model already."""
        from ..methods.fusion import Fusion

        if not isinstance(fuse, Fuse):
            raise CompositionError(f"add_fusion takes a Fuse block, got {fuse!r}")
        self.add(fuse.name, Fusion(adapters=fuse.fused(), temperature=temperature))
        return fuse.name

    def train_fusion(self, setup: Composition, train_also: Sequence[str] = ()) -> list[nn.Parameter]:
        """Freeze everything except the fusion layers of the Fuse blocks in ``setup`` (added if
        missing) and the modules in ``train_also``; activate ``setup``; return the parameters."""
        comp = as_composition(setup)
        fuses = [n for n in walk(comp) if isinstance(n, Fuse)] if comp is not None else []
        if not fuses:
            raise CompositionError(f"train_fusion needs a composition with a Fuse block, got {setup!r}")
        for fuse in fuses:
            if fuse.name not in self._records:
                self.add_fusion(fuse)
        heads = tuple(self.finder().paths(tuple(train_also))) if train_also else ()
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = [p for f in dict.fromkeys(fuses) for p in self._records[f.name].parameters()]
        for path in heads:
            params.extend(self.model.get_submodule(path).parameters())
        for p in params:
            p.requires_grad_(True)
        for fuse in fuses:
            self._records[fuse.name].heads = heads
        self.activate(comp)
        return params

    def split_parallel(self, output: Any) -> list[Any]:
        """The per-child outputs of a forward under ``Parallel(c_1, ..., c_n)``: the model output
        has batch ``n * B``; this returns n outputs of the same type, child i's rows each."""
        state = self._exec.state
        if state.replicas <= 1 or not state.parallel_batch:
            raise CompositionError("split_parallel needs the output of a forward under an active "
                                   "Parallel composition")
        return split_parallel(output, state.replicas, state.parallel_batch)

    def save_setup(self, directory: str | os.PathLike, names: Sequence[str] | None = None,
                   sources: dict[str, str] | None = None) -> None:
        """Write every adapter (or ``names``), fusion layers and the active composition to
        ``directory``: one subdirectory per adapter plus ``setup.json``. An adapter named in
        ``sources`` (name -> URL, e.g. ``hub://owner/repo@commit``) is recorded by its source
        instead of being written."""
        from .setup import save_setup

        save_setup(cast("AdapterKit", self), directory, names, sources)

    def load_setup(self, directory: str | os.PathLike, **options: Any) -> Composition | None:
        """Load what :meth:`save_setup` wrote and activate its composition (returned); adapters
        recorded by source load through ``kit.load(source, **options)`` (``token``,
        ``endpoint``, ``cache_dir`` for ``hub://``), so one the token cannot read fails the
        whole setup, naming the repo. The model is unchanged if this raises."""
        from .setup import load_setup

        return load_setup(cast("AdapterKit", self), directory, **options)
