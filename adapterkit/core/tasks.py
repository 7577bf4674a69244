"""Per-example task ids for task-conditioned adapter modules (Poly/MHR, HyperAdapter).

``with kit.tasks(ids):`` writes the batch's task ids (one per example) into every
:class:`TaskConditioned` module of the model; each module reads them through
:meth:`TaskConditioned.task_rows`, which expands them to the rows its host sees (``k``
consecutive rows per example when ``generate`` expands the batch for beams).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import AdapterError


class TaskIdError(AdapterError, ValueError):
    """Task ids that are missing, malformed or out of range for an adapter."""


def as_task_ids(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``ids`` as a (B,) long tensor on the CPU; raises TaskIdError for anything that is not a
    non-empty sequence of non-negative integers."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.numel() == 0 or ids.is_floating_point() or ids.is_complex():
            raise TaskIdError(f"task ids must be a non-empty 1-d integer tensor, got shape "
                              f"{tuple(ids.shape)} of {ids.dtype}")
        out = ids.detach().to("cpu", torch.long)
    else:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not ids:
            raise TaskIdError(f"task ids must be a non-empty sequence of integers (one per "
                              f"example), got {ids!r:.80}")
        bad = [v for v in ids if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise TaskIdError(f"task ids must be integers, got {bad[:3]!r}")
        out = torch.tensor(list(ids), dtype=torch.long)
    if bool((out < 0).any()):
        raise TaskIdError(f"task ids must be >= 0, got {out.min().item()}")
    return out


class TaskConditioned:
    """Mixin of adapter modules whose delta depends on each example's task. ``n_tasks`` is the
    number of tasks the module knows; ``task_ids`` the batch's ids while ``kit.tasks`` is open
    (None otherwise: a module with one task runs task 0, others refuse)."""

    n_tasks: int
    task_ids: torch.Tensor | None = None
    #: (ids, rows, device, expanded rows) of the last call, the ids held so their id stays theirs
    _expanded: tuple[torch.Tensor, int, torch.device, torch.Tensor] | None = None

    def task_rows(self, n_rows: int, device: torch.device) -> torch.Tensor:
        """The task id of each of the ``n_rows`` rows the host sees: (n_rows,) long."""
        ids = self.task_ids
        if ids is None:
            if self.n_tasks == 1:
                return torch.zeros(n_rows, dtype=torch.long, device=device)
            raise TaskIdError(
                f"this adapter knows {self.n_tasks} tasks and needs each example's task id: "
                "run the model inside `with kit.tasks(ids):` (one id per example)")
        hit = self._expanded
        if hit is not None and hit[0] is ids and hit[1] == n_rows and hit[2] == device:
            return hit[3]
        b = ids.shape[0]
        if n_rows % b:
            raise TaskIdError(f"kit.tasks was given {b} task ids but a host sees a batch of "
                              f"{n_rows} rows, which is not a multiple of it")
        if int(ids.max()) >= self.n_tasks:
            raise TaskIdError(f"task id {int(ids.max())} is out of range for an adapter of "
                              f"{self.n_tasks} tasks (ids 0..{self.n_tasks - 1})")
        rows = ids.to(device).repeat_interleave(n_rows // b)
        self._expanded = (ids, n_rows, device, rows)
        return rows


def per_task_lowrank(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
    """``x @ a[t] @ b[t]`` with ``t = rows[i]`` for row i: ``x``: (N, ..., in), ``a``: (T, in,
    r) and ``b``: (T, r, out) per task (or (N, in, r), (N, r, out) per row when ``rows`` is
    None-like: pass ``torch.arange(N)``); (N, ..., out). One matmul pair when every row has the
    same task, else per-row ``torch.bmm``."""
    n = rows.shape[0]
    x3 = x.to(a.dtype).reshape(n, -1, x.shape[-1])  # (N, T, in)
    first = rows[:1]
    if bool((rows == first).all()):
        t = int(first)
        out = (x3 @ a[t]) @ b[t]
    else:
        out = torch.bmm(torch.bmm(x3, a.index_select(0, rows)), b.index_select(0, rows))
    return out.reshape(*x.shape[:-1], out.shape[-1])
