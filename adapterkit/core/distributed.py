"""Adapters under ``torch.distributed``: sharded (FSDP2 ``DTensor``) parameters gathered to full
tensors, the main process, and the guard that checks what DDP and FSDP2 rely on before each
forward.

Adapter modules live inside their host module (``host.adapterkit.<name>``) and run through their
own module call, so an FSDP2 unit that holds a host holds its adapters, and per-module gathering
(FSDP2 units, DeepSpeed ZeRO-3) sees their parameters when they run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import DistributedError

if TYPE_CHECKING:
    from .records import AdapterRecord


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return None
    return DTensor


def is_sharded_tensor(t: torch.Tensor) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded ``DTensor`` (a collective: every rank must call it), or
    ``t`` itself."""
    return t.full_tensor() if is_sharded_tensor(t) else t  # type: ignore[attr-defined]


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 (``fully_shard``) has sharded any parameter of ``model``."""
    if any(type(m).__name__.startswith("FSDP") for m in model.modules()):
        return True
    return any(is_sharded_tensor(p) for p in model.parameters())


def is_main_process() -> bool:
    """Rank 0, or no process group at all."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def check_not_sharded(model: nn.Module, what: str) -> None:
    if is_sharded(model):
        raise DistributedError(
            f"cannot {what} on a sharded model: FSDP would never gather or reduce the new "
            "adapter's parameters (its units were built without them). Add every adapter "
            "before fully_shard(...), then shard")


def _active_ddp() -> Any:
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP
    except ImportError:
        return None
    return DDP._get_active_ddp_module()


def _reducer_numel(ddp: Any) -> int | None:
    """How many elements the DDP reducer's gradient buckets hold (None: not exposed)."""
    get = getattr(getattr(ddp, "reducer", None), "_get_zeros_like_grad_buckets", None)
    if get is None:
        return None
    try:
        return sum(b.buffer().numel() for b in get())
    except (RuntimeError, AttributeError):
        return None


class TrainGuard:
    """Forward pre-hook on the model, installed by ``kit.train``: under DDP the trainable set
    must be what DDP registered when it wrapped the model, and every trainable adapter must be
    active (DDP waits forever for gradients of an adapter that does not run)."""

    def __init__(self, kit: Any) -> None:
        self.kit = kit
        self.seen: dict[int, frozenset[int]] = {}
        self.warned = False

    def _inactive_trainable(self) -> list[str]:
        kit = self.kit
        records: dict[str, AdapterRecord] = kit._records
        return [name for name, rec in records.items() if name not in kit.active
                and not rec.merged and any(p.requires_grad for p in rec.parameters())]

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ddp = _active_ddp()
        if ddp is None or ddp.module is not module:
            if not self.warned and is_sharded(module) and self._inactive_trainable():
                self.warned = True
                warnings.warn(f"adapters {self._inactive_trainable()} are trainable but not "
                              "active: they get no gradient", stacklevel=2)
            return
        self._check_ddp(ddp, module)

    def _check_ddp(self, ddp: Any, module: nn.Module) -> None:
        idle = self._inactive_trainable()
        if idle:
            raise DistributedError(
                f"adapters {idle} are trainable but not active, so they get no gradient and DDP "
                "would wait for it ('Expected to have finished reduction'): activate them, or "
                "freeze them with kit.train(name) before wrapping in DDP")
        trainable = [p for p in module.parameters() if p.requires_grad]
        ids = frozenset(id(p) for p in trainable)
        numel = _reducer_numel(ddp)
        if id(ddp) not in self.seen:
            self.seen[id(ddp)] = ids
            if numel is not None and numel != sum(p.numel() for p in trainable):
                raise self._changed()
        elif self.seen[id(ddp)] != ids:
            raise self._changed()

    @staticmethod
    def _changed() -> DistributedError:
        return DistributedError(
            "the trainable parameters changed after the model was wrapped in DDP (kit.train, "
            "kit.add or requires_grad_ after wrapping): DDP only reduces the parameters that "
            "were trainable when it wrapped the model. Call kit.train(name) first, then wrap")


def install_guard(kit: Any) -> None:
    """Install :class:`TrainGuard` on the kit's model once."""
    model = kit.model
    if "_adapterkit_guard" not in model.__dict__:
        guard = TrainGuard(kit)
        model.__dict__["_adapterkit_guard"] = (guard, model.register_forward_pre_hook(
            guard, with_kwargs=True))
