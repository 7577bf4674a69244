"""The routing half of :class:`~adapterkit.kit.AdapterKit` (a mixin): Mixture routers
(``add_router``, ``train_router``, ``aux_loss``) and per-example task ids for task-conditioned
methods (``tasks``: Poly/MHR, HyperAdapter). See docs/composition.md and docs/methods.md."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.base import MethodKind
from ..core.tasks import TaskConditioned, TaskIdError, as_task_ids
from .blocks import CompositionError
from .compile import compile_plan
from .routed_blocks import Mixture

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from .executor import Executor


class Routing:
    """Methods of AdapterKit for adapters that choose adapters."""

    _exec: Executor
    _records: dict[str, AdapterRecord]
    model: nn.Module

    def add_router(self, mix: Mixture) -> str:
        """Add the router of ``mix`` (an adapter named ``mix.name``, of method ``mixture``) over
        its experts, which must be in the model already; returns its name."""
        from ..methods.router import MixtureRouter

        if not isinstance(mix, Mixture):
            raise CompositionError(f"add_router takes a Mixture block, got {mix!r}")
        config = MixtureRouter(experts=tuple(str(c) for c in mix.children), router=mix.router,
                               top_k=mix.top_k)
        self.add(mix.name, config)  # type: ignore[attr-defined]
        return mix.name

    def train_router(self, mix: Mixture, train_also: Sequence[str] = (),
                     experts: bool = False) -> list[nn.Parameter]:
        """Freeze everything except the router of ``mix`` (added if missing), the experts too
        when ``experts`` (joint training), and the modules in ``train_also`` (saved with the
        router); activate ``mix``; return the trainable parameters. The experts may come from
        anywhere (``kit.load`` of PEFT checkpoints, the hub, ...). The model is unchanged if
        this raises."""
        if not isinstance(mix, Mixture):
            raise CompositionError(f"train_router takes a Mixture block, got {mix!r}")
        added = mix.name not in self._records
        if added:
            self.add_router(mix)
        try:
            heads = tuple(self.finder().paths(tuple(train_also))) if train_also else ()  # type: ignore[attr-defined]
            plan = compile_plan(self, mix)  # type: ignore[arg-type]
        except Exception:
            if added:
                self.remove(mix.name)  # type: ignore[attr-defined]
            raise
        for p in self.model.parameters():
            p.requires_grad_(False)
        owners = [mix.name, *(str(c) for c in mix.children)] if experts else [mix.name]
        params = [p for n in owners for p in self._records[n].parameters()]
        for path in heads:
            params.extend(self.model.get_submodule(path).parameters())
        for p in params:
            p.requires_grad_(True)
        self._records[mix.name].heads = heads
        self._exec.set_plan(plan)
        return params

    def aux_loss(self) -> torch.Tensor:
        """The load-balancing loss of the last forward: for each active Mixture with
        ``balance`` set, the mean over its hosts of the router's loss (see
        ``adapterkit.core.mixing.balance_loss``), summed over Mixtures; 0 when there is none.
        Add it to the task loss with a small weight (0.01 is usual)."""
        plan = self._exec.state.plan
        total: torch.Tensor | None = None
        for name in plan.names if plan is not None else ():
            record = self._records.get(name)
            if record is None or record.spec.kind is not MethodKind.ROUTER:
                continue
            losses = [v for m in record.modules.values()
                      if (v := getattr(m, "last_aux", None)) is not None]
            if losses:
                mean = torch.stack(losses).mean()
                total = mean if total is None else total + mean
        if total is not None:
            return total
        first = next(self.model.parameters(), None)
        return torch.zeros((), device=first.device if first is not None else None)

    def _load_prototypes(self, name: str, directory: str | os.PathLike) -> None:
        """Register the Arrow prototypes stored beside a loaded weight-delta adapter (as the hub
        keeps them); a bad file removes the adapter again and raises LoadError."""
        from .arrow import PROTOTYPES_FILE, load_prototypes

        record = self._records[name]
        if record.spec.kind is not MethodKind.WEIGHT_DELTA or \
                not (Path(directory) / PROTOTYPES_FILE).is_file():
            return
        try:
            load_prototypes(self, name, directory)  # type: ignore[arg-type]
        except Exception:
            self.remove(name)  # type: ignore[attr-defined]
            raise

    @contextmanager
    def tasks(self, ids: Sequence[int] | torch.Tensor) -> Iterator[None]:
        """Inside the block, example ``b`` of every batch is task ``ids[b]`` for every
        task-conditioned adapter (Poly/MHR, HyperAdapter); the previous ids come back
        afterwards. Raises TaskIdError for ids that are not non-negative integers or that no
        adapter knows; an adapter that runs with an id beyond its own tasks raises then."""
        tensor = as_task_ids(ids)
        mods = [m for r in self._records.values() for m in r.modules.values()
                if isinstance(m, TaskConditioned)]
        if not mods:
            raise TaskIdError("kit.tasks sets the task ids of task-conditioned adapters (Poly, "
                              f"HyperAdapter); none is in the model (adapters: {list(self._records)})")
        known = max(m.n_tasks for m in mods)  # each module checks its own range when it runs
        if int(tensor.max()) >= known:
            raise TaskIdError(f"task id {int(tensor.max())} is out of range: the task-conditioned "
                              f"adapters know at most {known} tasks (ids 0..{known - 1})")
        before = [m.task_ids for m in mods]
        for m in mods:
            m.task_ids = tensor
        try:
            yield
        finally:
            for m, old in zip(mods, before):
                m.task_ids = old
