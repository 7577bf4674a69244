"""Runs active adapters at their sites through forward hooks; model classes are never patched.

Each host module (a module some adapter changes) gets one child ``adapterkit``: an
:class:`AdapterSlot` holding that host's adapter modules by adapter name, and one forward hook
that applies the active ones. Modules whose input feeds parallel adapters get a pre-hook writing
that input to a :class:`Tap`. Base parameter names are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .methods.base import AdapterModule, MethodKind, Tap

SLOT = "adapterkit"


class KitState:
    """What runs now: the active adapter names, in order."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active: tuple[str, ...] = ()


class AdapterSlot(nn.ModuleDict):
    """The adapter modules of one host, by adapter name."""


def _apply_active(slot: AdapterSlot, state: KitState, host: nn.Module, h: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    mods = slot._modules
    present = [mods[n] for n in state.active if n in mods]
    # weight deltas see the host input only, so they go first; residual adapters then see
    # the host output including them
    for mod in present:
        if mod.kind is MethodKind.WEIGHT_DELTA and not mod.merged:
            h = mod.apply(h, x, host)
    for mod in present:
        if mod.kind is MethodKind.RESIDUAL:
            h = mod.apply(h, x, host)
    return h


def make_hook(slot: AdapterSlot, state: KitState) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not state.active:
            return None
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(output, tuple):
            return (_apply_active(slot, state, module, output[0], x), *output[1:])
        return _apply_active(slot, state, module, output, x)

    return hook


def make_tap_hook(tap: Tap) -> Callable[..., None]:
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tap.value = args[0] if args else next(iter(kwargs.values()), None)

    return pre_hook


class Executor:
    """Owns the slots, hooks and taps of one model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state = KitState()
        self._hooks: dict[str, RemovableHandle] = {}
        self._taps: dict[str, tuple[Tap, RemovableHandle, int]] = {}

    def attach(self, name: str, host_path: str, module: AdapterModule,
               input_path: str | None) -> None:
        host = self.model.get_submodule(host_path)
        slot = host._modules.get(SLOT)
        if slot is None:
            slot = AdapterSlot()
            host.add_module(SLOT, slot)
            self._hooks[host_path] = host.register_forward_hook(
                make_hook(slot, self.state), with_kwargs=True)
        module.train(host.training)  # a new module follows its host's train/eval mode
        slot[name] = module
        if input_path is not None:
            module.tap = self._tap(input_path)

    def detach(self, name: str, host_path: str) -> None:
        host = self.model.get_submodule(host_path)
        slot = host._modules[SLOT]
        module = slot[name]
        del slot[name]
        if module.tap is not None:
            self._untap(module.tap)
            module.tap = None
        if len(slot) == 0:
            self._hooks.pop(host_path).remove()
            delattr(host, SLOT)

    def _tap(self, path: str) -> Tap:
        if path in self._taps:
            tap, handle, count = self._taps[path]
            self._taps[path] = (tap, handle, count + 1)
            return tap
        tap = Tap()
        handle = self.model.get_submodule(path).register_forward_pre_hook(
            make_tap_hook(tap), with_kwargs=True)
        self._taps[path] = (tap, handle, 1)
        return tap

    def _untap(self, tap: Tap) -> None:
        for path, (t, handle, count) in list(self._taps.items()):
            if t is tap:
                if count == 1:
                    handle.remove()
                    del self._taps[path]
                else:
                    self._taps[path] = (t, handle, count - 1)
                return
