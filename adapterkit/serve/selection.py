"""What a request runs: the adapter named in ``model``, or a weighted list in ``adapters`` (or
LoRAX's ``merged_adapters``), turned into one route entry of the kit.

- Weight-delta adapters (LoRA, IA3, VeRA, DoRA, ...) combine exactly: an ``Average`` with the
  given weights, whose output is ``h + sum_i w_i delta_i``, the weighted sum of the deltas.
- Residual (bottleneck) and input-level (prompt, prefix) adapters are not additive in that
  sense: they compose as a ``Stack`` (weight-delta part first, then the residual adapters in the
  order given, a prompt or prefix at the inputs), at weight 1; another weight is refused, as is
  more than one prompt/prefix adapter.
- The entry is built once per distinct request shape (content hashes and weights) and cached.

Decode steps run a second entry without the prompt/prefix adapter: after prefill its effect is
entirely in the row's cached positions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..compose.blocks import BASE, Average, Stack
from ..core.base import MethodKind
from .adapters import AdapterCache, Registered, kit_name
from .protocol import ServeError

MERGE_STRATEGIES = ("linear",)
_INPUT = (MethodKind.PROMPT, MethodKind.PREFIX)


@dataclass(frozen=True)
class Item:
    digest: str
    weight: float
    kind: MethodKind
    name: str  # as served


@dataclass(frozen=True)
class Selection:
    """The adapters of one request (empty: the base model)."""

    items: tuple[Item, ...]

    @property
    def key(self) -> tuple:
        return tuple((i.digest, i.weight) for i in self.items)

    @property
    def digests(self) -> list[str]:
        return sorted({i.digest for i in self.items})

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.items]

    @property
    def has_input(self) -> bool:
        return any(i.kind in _INPUT for i in self.items)


BASE_SELECTION = Selection(())


def _not_found(name: str, param: str = "model") -> ServeError:
    return ServeError(404, f"The model `{name}` does not exist.", "NotFoundError", param)


def select(cache: AdapterCache, base_ids: set[str], model: str | None,
           adapters: list[dict] | None, merged: dict | None) -> Selection:
    """The request's selection; ServeError (404 unknown names, 400 bad combinations)."""
    if merged is not None:
        if adapters is not None:
            raise ServeError(400, "give either 'adapters' or 'merged_adapters', not both",
                             param="merged_adapters")
        adapters = _from_merged(merged)
    if adapters is None:
        if model is None or model in base_ids:
            return BASE_SELECTION
        reg = cache.lookup(model)
        if reg is None:
            raise _not_found(model)
        return _check(Selection((_item(reg, 1.0),)))
    if model is not None and model not in base_ids and cache.lookup(model) is None:
        raise _not_found(model)
    return _check(Selection(tuple(_items(cache, adapters))))


def _items(cache: AdapterCache, adapters: list[dict]) -> list[Item]:
    if not adapters:
        raise ServeError(400, "'adapters' is empty: give at least one {\"name\", \"weight\"}",
                         param="adapters")
    items = []
    for i, spec in enumerate(adapters):
        name, weight = spec.get("name"), spec.get("weight", 1.0)
        if not isinstance(name, str):
            raise ServeError(400, f"adapters[{i}].name must be a string", param="adapters")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ServeError(400, f"adapters[{i}].weight must be a number", param="adapters")
        reg = cache.lookup(name)
        if reg is None:
            raise _not_found(name, "adapters")
        items.append(_item(reg, float(weight)))
    return items


def _item(reg: Registered, weight: float) -> Item:
    return Item(reg.digest, weight, reg.kind, reg.name)


def _from_merged(merged: dict) -> list[dict]:
    ids, weights = merged.get("ids"), merged.get("weights")
    strategy = merged.get("merge_strategy", "linear")
    if strategy not in MERGE_STRATEGIES:
        raise ServeError(400, f"merged_adapters.merge_strategy {strategy!r} is not supported; "
                         f"supported: {list(MERGE_STRATEGIES)} (the exact weighted sum of the "
                         "adapters' deltas)", param="merged_adapters")
    if not isinstance(ids, list) or not ids:
        raise ServeError(400, "merged_adapters.ids must be a non-empty list of adapter names",
                         param="merged_adapters")
    if weights is None:
        weights = [1.0 / len(ids)] * len(ids)
    if not isinstance(weights, list) or len(weights) != len(ids):
        raise ServeError(400, f"merged_adapters.weights must be a list of {len(ids)} numbers",
                         param="merged_adapters")
    return [{"name": n, "weight": w} for n, w in zip(ids, weights)]


def _check(sel: Selection) -> Selection:
    inputs = [i for i in sel.items if i.kind in _INPUT]
    if len(inputs) > 1:
        raise ServeError(400, f"a request runs at most one prompt/prefix adapter, got "
                         f"{[i.name for i in inputs]}", param="adapters")
    for i in sel.items:
        if i.kind is MethodKind.FUSION:
            raise ServeError(400, f"adapter {i.name!r} is a fusion layer; it runs inside a Fuse "
                             "composition only", param="adapters")
        if i.kind is not MethodKind.WEIGHT_DELTA and i.weight != 1.0:
            raise ServeError(400, f"adapter {i.name!r} ({i.kind.value}) is not additive: it "
                             f"composes as a Stack at weight 1, got weight {i.weight}; weights "
                             "apply to weight-delta adapters (LoRA, IA3, ...)", param="adapters")
    return sel


class Entries:
    """Route entries per selection shape: (prefill entry, decode entry), built once each."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()

    def of(self, sel: Selection) -> tuple:
        hit = self._cache.get(sel.key)
        if hit is None:
            hit = self._cache[sel.key] = _build(sel)
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(sel.key)
        return hit

    def __len__(self) -> int:
        return len(self._cache)


def _build(sel: Selection) -> tuple:
    if not sel.items:
        return BASE, BASE
    deltas = [i for i in sel.items if i.kind is MethodKind.WEIGHT_DELTA]
    parts: list = []
    if len(deltas) == 1 and deltas[0].weight == 1.0:
        parts.append(kit_name(deltas[0].digest))
    elif deltas:
        parts.append(Average(*[kit_name(i.digest) for i in deltas],
                             weights=[i.weight for i in deltas]))
    parts += [kit_name(i.digest) for i in sel.items if i.kind is MethodKind.RESIDUAL]
    inputs = [kit_name(i.digest) for i in sel.items if i.kind in _INPUT]
    decode = BASE if not parts else parts[0] if len(parts) == 1 else Stack(*parts)
    if not inputs:
        return decode, decode
    prefill = inputs[0] if not parts else Stack(inputs[0], *parts)
    return prefill, decode
