"""Runs active adapters at their sites through forward hooks; model classes are never patched.

Each host module (a module some adapter changes) gets one child ``adapterkit``: an
:class:`AdapterSlot` holding that host's adapter modules by adapter name, and one forward hook
that runs the active composition, compiled by :mod:`adapterkit.compose` (an adapter name, a
Stack, Route, ...). Modules whose input feeds parallel adapters get a pre-hook writing that input
to a :class:`Tap`; the hook hands each adapter its input (tapped or the host's) through
:class:`~adapterkit.compose.nodes.Inputs`. Base parameter names are left as they were.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, cast

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..core.base import SLOT, AdapterModule, Tap
from ..core.stack_cache import StackCache
from ..methods.inputs import InputPreHook
from .nodes import Inputs, Node
from .parallel import ParallelPreHook


class KitState:
    """What runs now: the compiled composition (``root``; None: the base model), the adapter
    names it uses, its Parallel replica count, and the batch size Parallel last saw."""

    __slots__ = ("active", "parallel_batch", "plan", "replicas", "root")

    def __init__(self) -> None:
        self.active: tuple[str, ...] = ()
        self.plan: Any = None  # compose.compile.Plan
        self.root: Node | None = None
        self.replicas = 1
        self.parallel_batch = 0


class AdapterSlot(nn.ModuleDict):
    """The adapter modules of one host, by adapter name. ``taps``: the taps its modules read;
    ``route_cache``: routing plans and stacked weights, cleared whenever the contents change;
    ``version``: counts those changes."""

    def __init__(self) -> None:
        super().__init__()
        self.taps: tuple[Tap, ...] = ()
        self.route_cache = StackCache()
        self.version = 0

    def adapter(self, name: str) -> AdapterModule | None:
        """The adapter module ``name`` at this host, or None."""
        return cast("AdapterModule | None", self._modules.get(name))

    def changed(self) -> None:
        modules = cast("Iterable[AdapterModule]", self.values())
        self.taps = tuple(dict.fromkeys(m.tap for m in modules if m.tap is not None))
        self.route_cache.clear()
        self.version += 1


class SlotHook:
    """The forward hook of one host. An object rather than a closure, so that
    ``copy.deepcopy(model)`` gives the copy hooks bound to the copy's slot and state."""

    __slots__ = ("slot", "state")

    def __init__(self, slot: AdapterSlot, state: KitState) -> None:
        self.slot, self.state = slot, state

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        root = self.state.root
        if root is None:
            return None
        slot = self.slot
        x = args[0] if args else next(iter(kwargs.values()), None)
        inp = Inputs(x, {t: t.value for t in slot.taps} if slot.taps else None)
        if isinstance(output, tuple):
            return (root.run(output[0], inp, slot, module), *output[1:])
        return root.run(output, inp, slot, module)


class TapHook:
    """The forward pre-hook writing a module's input to its :class:`Tap`."""

    __slots__ = ("tap",)

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.tap.value = args[0] if args else next(iter(kwargs.values()), None)


class Executor:
    """Owns the slots, hooks and taps of one model. ``epoch`` counts the changes compiled plans
    depend on (adapters attached or detached, merged or unmerged); ``route_plans`` keeps
    compiled routes by their entries, valid while the epoch is the one they were compiled in."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state = KitState()
        self.epoch = 0
        self.route_plans: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self._hooks: dict[str, RemovableHandle] = {}
        self._taps: dict[str, tuple[Tap, RemovableHandle, int]] = {}
        self._parallel: RemovableHandle | None = None
        self._inputs: RemovableHandle | None = None  # the pre-hook of prompt/prefix adapters

    def route_plan(self, key: Hashable, compile: Callable[[], Any], size: int = 64) -> Any:
        """The plan compiled for ``key`` in this epoch, else ``compile()`` (kept, LRU)."""
        hit = self.route_plans.get(key)
        if hit is not None and hit[0] == self.epoch:
            self.route_plans.move_to_end(key)
            return hit[1]
        plan = compile()
        self.route_plans[key] = (self.epoch, plan)
        self.route_plans.move_to_end(key)
        while len(self.route_plans) > size:
            self.route_plans.popitem(last=False)
        return plan

    def set_plan(self, plan: Any) -> None:
        """Run ``plan`` (a ``compose.compile.Plan``) from the next forward on."""
        state = self.state
        state.plan, state.root, state.active = plan, plan.root, plan.names
        state.replicas = plan.replicas
        if plan.replicas > 1 and self._parallel is None:
            self._parallel = self.model.register_forward_pre_hook(
                ParallelPreHook(state), with_kwargs=True)
        elif plan.replicas == 1 and self._parallel is not None:
            self._parallel.remove()
            self._parallel = None
        if plan.inputs and self._inputs is None:
            self._inputs = self.model.register_forward_pre_hook(
                InputPreHook(state), with_kwargs=True)
        elif not plan.inputs and self._inputs is not None:
            self._inputs.remove()
            self._inputs = None

    def attach(self, name: str, host_path: str, module: AdapterModule,
               input_path: str | None) -> None:
        host = self.model.get_submodule(host_path)
        slot = cast("AdapterSlot | None", host._modules.get(SLOT))
        if slot is None:
            slot = AdapterSlot()
            host.add_module(SLOT, slot)
            self._hooks[host_path] = host.register_forward_hook(
                SlotHook(slot, self.state), with_kwargs=True)
        module.train(host.training)  # a new module follows its host's train/eval mode
        slot[name] = module
        if input_path is not None:
            module.tap = self._tap(input_path)
        slot.changed()
        self.epoch += 1
        module.attached(host)

    def detach(self, name: str, host_path: str) -> None:
        host = self.model.get_submodule(host_path)
        slot = cast(AdapterSlot, host._modules[SLOT])
        module = cast(AdapterModule, slot[name])
        module.detached(host)
        del slot[name]
        if module.tap is not None:
            self._untap(module.tap)
            module.tap = None
        slot.changed()
        self.epoch += 1
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
            TapHook(tap), with_kwargs=True)
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
