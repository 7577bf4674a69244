"""The composition blocks that choose their adapters: ``Mixture`` (a learned router per host)
and ``Arrow`` (zero-shot routing from each LoRA's own weights). Values like every block (see
:mod:`adapterkit.compose.blocks`, which registers them); their nodes live in
``compose/mixture.py`` and ``compose/arrow.py``."""

from __future__ import annotations

import math
from typing import Any, cast

from .blocks import Block, Child, CompositionError, _check_name


class Mixture(Block):
    """A learned mixture of adapters (the experts, adapter names): at every host the router
    ``name`` (default ``mix_<experts>``, created by ``kit.add_router`` or
    ``kit.train_router``) gives weights ``g = softmax(W x + b)`` from the host's input, per
    token or per sequence (``router``), over all experts or the ``top_k`` largest (renormalised
    to sum 1), and the output is ``h + sum_i g_i delta_i``. ``balance`` (``"switch"`` or
    ``"specialization"``) records a load-balancing loss each forward, read by
    ``kit.aux_loss()``. See docs/composition.md."""

    __slots__ = ("balance", "name", "router", "top_k")
    name: str
    router: str
    top_k: int | None
    balance: str | None

    def __init__(self, *experts: Child, router: str = "token", top_k: int | None = None,
                 name: str | None = None, balance: str | None = None) -> None:
        self._set_children(experts)
        if len(set(experts)) != len(experts):
            raise CompositionError(f"Mixture names an expert twice: {list(experts)}")
        if router not in ("token", "sequence"):
            raise CompositionError(f"Mixture.router must be 'token' or 'sequence', got {router!r}")
        _check_top_k("Mixture", top_k, len(experts))
        if balance not in (None, "switch", "specialization"):
            raise CompositionError(f"Mixture.balance must be None, 'switch' or "
                                   f"'specialization', got {balance!r}")
        name = name if name is not None else "mix_" + "_".join(cast("tuple[str, ...]", experts))
        _check_name(name)
        for key, value in (("name", name), ("router", router), ("top_k", top_k),
                           ("balance", balance)):
            object.__setattr__(self, key, value)

    def options(self) -> dict[str, Any]:
        return {"router": self.router, "top_k": self.top_k, "name": self.name,
                "balance": self.balance}


class Arrow(Block):
    """Zero-shot token routing over LoRA experts (Ostapenko et al. 2024, arXiv:2405.11157):
    at each host, expert i's prototype ``v_i`` is the top right singular vector of its
    ``B A``; a token ``x`` scores ``|<x, v_i>|``, the ``top_k`` scores (all: None) go through a
    softmax at ``temperature``, and the output is ``h + sum_i g_i delta_i``. No training."""

    __slots__ = ("temperature", "top_k")
    top_k: int | None
    temperature: float

    def __init__(self, *experts: Child, top_k: int | None = None,
                 temperature: float = 1.0) -> None:
        self._set_children(experts)
        if len(set(experts)) != len(experts):
            raise CompositionError(f"Arrow names an expert twice: {list(experts)}")
        _check_top_k("Arrow", top_k, len(experts))
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise CompositionError(f"Arrow.temperature must be a finite number > 0, got "
                                   f"{temperature!r}")
        object.__setattr__(self, "top_k", top_k)
        object.__setattr__(self, "temperature", float(temperature))

    def options(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "temperature": self.temperature}

    @staticmethod
    def prototypes(kit: Any, name: str) -> dict[str, Any]:
        """``{site path: prototype}`` of adapter ``name``: the top right singular vector of its
        weight delta at each site (float64, unit norm), computed once and cached while the
        adapter's weights are unchanged; stored prototypes (the hub's) are used when present.
        See ``adapterkit.compose.arrow``."""
        from .arrow import adapter_prototypes

        return adapter_prototypes(kit, name)

    @staticmethod
    def save_prototypes(kit: Any, name: str, directory: Any) -> Any:
        """Write adapter ``name``'s prototypes to ``directory/arrow_prototypes.safetensors``
        (beside its checkpoint, as the hub keeps them); ``kit.load`` of that directory
        registers them. Returns the file's path."""
        from .arrow import save_prototypes

        return save_prototypes(kit, name, directory)

    @staticmethod
    def store_prototypes(kit: Any, name: str, prototypes: dict[str, Any]) -> None:
        """Use ``prototypes`` (``{site path: (in,) vector}``) for adapter ``name`` while its
        weights stay as they are now; each is checked and normalised."""
        from .arrow import store_prototypes

        store_prototypes(kit, name, prototypes)


def _check_top_k(block: str, top_k: object, n: int) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or not 1 <= top_k <= n):
        raise CompositionError(f"{block}.top_k must be None or an integer in 1..{n} (the number "
                               f"of experts), got {top_k!r}")
