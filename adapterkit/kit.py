"""``AdapterKit``: the Python front door over one model."""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from .compose.api import Compositions
from .compose.blocks import BASE, Block, CompositionError, as_composition
from .compose.compile import compile_plan
from .compose.executor import Executor
from .compose.learned import Routing
from .core import hosts
from .core.distributed import check_not_sharded, install_guard
from .core.hosts import MergeReport
from .core.layouts import Layout, get_layout, layout_for
from .core.merging import fold, tied_hosts, unfold
from .core.records import AdapterRecord
from .core.sites import SiteFinder, model_type_of
from .core.summary import SummaryTable
from .errors import AdapterNameError, ConfigError, NotMergeableError, closest
from .io.kitio import load_adapter, save_adapter
from .io.resolve import resolve
from .methods import AdapterModule, spec_of
from .ops.extract.model import ExtractionReport, extract

_ATTR = "_adapterkit"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")


class AdapterKit(Compositions, Routing):
    """Adapters on one ``torch.nn.Module``. ``AdapterKit(model)`` twice gives the same kit.
    Composition methods (``route``, ``add_fusion``, ``train_fusion``, ``split_parallel``,
    ``save_setup``, ``load_setup``) come from :class:`~adapterkit.compose.api.Compositions`;
    ``add_router``, ``train_router``, ``aux_loss`` and ``tasks`` from
    :class:`~adapterkit.compose.learned.Routing`."""

    # set once per model, in ``__new__``
    model: nn.Module
    layout: Layout | None
    _exec: Executor
    _records: dict[str, AdapterRecord]
    #: the dtype of new adapters' parameters (None: float32 on half and quantized hosts)
    adapter_dtype: torch.dtype | None
    #: what the latest ``retrieve`` did (an ``adapterkit.io.hub.retrieve.Retrieval``), or None
    last_retrieval: Any

    def __new__(cls, model: nn.Module, layout: str | Layout | None = None) -> AdapterKit:
        existing = model.__dict__.get(_ATTR)
        if isinstance(layout, str):
            layout = get_layout(layout)
        if isinstance(existing, cls):
            if layout is not None and layout != existing.layout:
                if existing._records:
                    raise ConfigError(
                        f"this model's kit uses layout {getattr(existing.layout, 'family', None)!r} "
                        f"and holds adapters {list(existing._records)}; remove them before "
                        f"switching to layout {layout.family!r}")
                existing.layout = layout
            return existing
        self = super().__new__(cls)
        self.model = model
        self.layout = layout if layout is not None else layout_for(model_type_of(model))
        self._exec = Executor(model)
        self._records = {}
        self.adapter_dtype = None
        self.last_retrieval = None
        model.__dict__[_ATTR] = self
        return self

    def __init__(self, model: nn.Module, layout: str | Layout | None = None) -> None:
        """State is set up once, in ``__new__``."""

    def __deepcopy__(self, memo: dict[int, Any]) -> AdapterKit:
        """Copied with its model (``copy.deepcopy(model)``): the copy serves the copied model."""
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._records)

    @property
    def active(self) -> tuple[str, ...]:
        return self._exec.state.active

    def record(self, name: str) -> AdapterRecord:
        try:
            return self._records[name]
        except KeyError:
            hint = closest(name, self._records)
            raise AdapterNameError(
                f"no adapter named {name!r}; adapters: {self.names}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            ) from None

    def config(self, name: str) -> Any:
        return self.record(name).config

    def parameters(self, name: str | None = None) -> Iterator[nn.Parameter]:
        """Adapter parameters (of one adapter, or of all), found by module type."""
        if name is not None:
            yield from self.record(name).parameters()
            return
        for module in self.model.modules():
            if isinstance(module, AdapterModule):
                yield from module.parameters(recurse=True)

    def finder(self) -> SiteFinder:
        return SiteFinder(self.model, self.layout)

    # -- adding and removing -----------------------------------------------------------------
    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == BASE:
            raise AdapterNameError(
                f"bad adapter name {name!r}: use letters, digits, '_' and '-' ({BASE!r} is reserved)"
            )
        if name in self._records:
            raise AdapterNameError(f"an adapter named {name!r} exists already; adapters: {self.names}")

    def plan(self, name: str, config: Any, dtype: torch.dtype | None = None) -> AdapterRecord:
        """Build the adapter's modules without touching the model (validation happens here).
        Their parameters take ``dtype``, else ``kit.adapter_dtype``, else float32 on float16,
        bfloat16 and quantized hosts (see ``core.hosts.adapter_dtype``)."""
        self._check_new_name(name)
        check_not_sharded(self.model, f"add adapter {name!r}")
        spec = spec_of(config)
        finder = self.finder()
        if spec.resolve is not None:
            config = spec.resolve(config, finder)
        sites = spec.find_sites(config, finder)
        hosts.check_method(spec, sites, finder)
        modules = {s.host: spec.build(config, s, finder) for s in sites}
        chosen = dtype or self.adapter_dtype
        for s in sites:
            hosts.cast_adapter(modules[s.host], finder.module(s.host), spec.kind, chosen)
        return AdapterRecord(name, config, spec, sites, modules)

    def attach(self, record: AdapterRecord) -> None:
        for site in record.sites:
            self._exec.attach(record.name, site.host, record.modules[site.host], site.input)
        self._records[record.name] = record

    def add(self, name: str, config: Any, dtype: torch.dtype | None = None) -> None:
        """Add adapter ``name`` (parameters in ``dtype``, see :meth:`plan`); the model is
        unchanged if this raises."""
        self.attach(self.plan(name, config, dtype))

    def remove(self, name: str) -> None:
        """Remove adapter ``name``, unmerging it first; the base model is as before ``add``."""
        record = self.record(name)
        self._check_not_composed(name, "remove")
        if record.merged:
            self._unmerge_record(record)
        for site in record.sites:
            self._exec.detach(name, site.host)
        del self._records[name]
        if name in self.active:  # only a name or a Stack of names may lose a member
            self.activate([n for n in self.active if n != name])

    # -- running -----------------------------------------------------------------------------
    def _check_not_composed(self, name: str, what: str) -> None:
        plan = self._exec.state.plan
        if name in self.active and not plan.flat:
            raise CompositionError(f"cannot {what} {name!r}: it is part of the active composition "
                                   f"{plan.composition!r}; activate another one first")

    def activate(self, name: str | Sequence[str] | Block | None, strategy: str | None = None) -> None:
        """Select what runs in forward: an adapter name, a list of names (their ``Stack``), a
        composition block (``Stack``, ``Fuse``, ``Average``, ``Split``, ``BatchSplit``,
        ``Parallel``, ``Route``; see docs/composition.md) or None for the base model. Raises
        ``CompositionError`` for a combination the adapters cannot run; ``strategy`` forces
        Route's LoRA kernel (``"auto"``, ``"dense"``, ``"gather"``, ``"loop"``)."""
        self._exec.set_plan(compile_plan(self, as_composition(name), strategy))

    def train(self, name: str, train_also: Sequence[str] = (),
              quantize_bits: int | None = None) -> list[nn.Parameter]:
        """Freeze everything except adapter ``name`` and the modules named in ``train_also``
        (saved with the adapter), activate it, and return the trainable parameters.
        ``quantize_bits`` turns on quantisation-aware training (see ``adapterkit.ops.quantize.model``)."""
        record = self.record(name)
        heads = tuple(self.finder().paths(tuple(train_also))) if train_also else ()
        if quantize_bits is not None:
            from .ops.quantize.model import enable_qat

            enable_qat(self, name, quantize_bits)
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = list(record.parameters())
        for path in heads:
            params.extend(self.model.get_submodule(path).parameters())
        for p in params:
            p.requires_grad_(True)
        record.heads = heads
        self.activate(name)
        install_guard(self)
        return params

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters ``kit.train(name)`` made trainable (the adapter's and its heads'), read
        from the modules now: after ``fully_shard`` these are the sharded parameters, which an
        optimizer must be given instead of the list ``kit.train`` returned before sharding."""
        record = self.record(name)
        params = list(record.parameters())
        for path in record.heads:
            params.extend(self.model.get_submodule(path).parameters())
        return params

    # -- merging -----------------------------------------------------------------------------
    def merge(self, name: str) -> MergeReport:
        """Fold adapter ``name`` into the base weights (weight-delta methods only). On a
        quantized host the weight is dequantized, added to and requantized: the report gives
        each such host's rounding error (and a warning names the largest)."""
        record = self.record(name)
        if not record.spec.mergeable:
            why = record.spec.merge_note or f"a {record.spec.kind.value} method with no weight delta"
            raise NotMergeableError(
                f"adapter {name!r} uses {record.spec.name}, {why}: it cannot be merged; "
                "mergeable methods: those with kind weight_delta (see adapterkit.methods())"
            )
        report = MergeReport(name)
        if record.merged:
            return report
        self._check_not_composed(name, "merge")
        self._check_untied(record)
        hosts.check_mergeable([self.model.get_submodule(h) for h in record.modules], name)
        with torch.no_grad():
            for host_path, module in record.modules.items():
                error = fold(self.model.get_submodule(host_path), module)
                if error is not None:
                    report.rounding_error[host_path] = error
        record.merged = True
        self._exec.epoch += 1  # compiled routes checked the merged flags
        if report.rounding_error:
            warnings.warn(f"merging {name!r} requantized {len(report.rounding_error)} quantized "
                          f"weight(s): the largest rounding error is {report.max_error:.3g}",
                          stacklevel=2)
        return report

    def _check_untied(self, record: AdapterRecord) -> None:
        """Merging into a weight another module shares (tied embeddings and LM heads) would
        change that module too, so it is refused."""
        tied = tied_hosts(self.model, list(record.modules))
        if tied:
            raise NotMergeableError(
                f"adapter {record.name!r} cannot be merged: these weights are tied to other "
                f"modules, which merging would change too: {tied}; keep it unmerged or untie them"
            )

    def _unmerge_record(self, record: AdapterRecord) -> None:
        with torch.no_grad():
            for host_path, module in record.modules.items():
                unfold(self.model.get_submodule(host_path), module)
        record.merged = False
        self._exec.epoch += 1

    def unmerge(self, name: str | None = None) -> None:
        """Take merged adapters (one, or all) back out of the base weights."""
        records = [self.record(name)] if name else list(self._records.values())
        for record in reversed(records):
            if record.merged:
                self._unmerge_record(record)

    def fold(self, name: str) -> None:
        """Fold adapter ``name``'s training-time reparameterisation into the tensors it computes
        (prefix tuning's MLP into the prefixes): the outputs stay the same, and saving then
        writes only those tensors, with a config that no longer asks for the reparameterisation."""
        record = self.record(name)
        folded = getattr(record.config, "folded", None)
        if folded is None:
            raise ConfigError(f"adapter {name!r} ({record.spec.name}) has no reparameterisation "
                              "to fold")
        for module in record.modules.values():
            fold_module = cast("Callable[[], None]", module.fold)  # a foldable config's module
            fold_module()
        record.config = folded()

    def combine(self, name: str, weights: dict[str, float], how: str = "cat",
                **options: Any) -> Any:
        """Add adapter ``name`` combining the weighted adapters (``how``: cat, svd, linear,
        task_arithmetic, ties, dare_linear, dare_ties); returns a ``CombineReport``. See
        ``adapterkit.ops.combine.model.combine``."""
        from .ops.combine.model import combine

        return combine(self, name, weights, how, **options)

    # -- persistence -------------------------------------------------------------------------
    def save(self, name: str, directory: str | os.PathLike, format: str = "adapterkit") -> None:
        """Write adapter ``name`` (and its ``train_also`` heads) to ``directory``."""
        save_adapter(self, name, directory, format)

    def load(self, source: str | os.PathLike, name: str | None = None, **options: Any) -> str:
        """Load an adapter from ``source`` (a directory in the adapterkit, PEFT or AdapterHub
        format, or a URL such as ``hub://owner/name@rev``; ``options`` go to the URL's
        resolver); returns its name. The model is unchanged if this raises."""
        directory = resolve(source, **options)
        loaded = load_adapter(self, directory, name)
        self._load_prototypes(loaded, directory)  # Arrow prototypes stored beside it
        return loaded

    def push(self, name: str, repo: str, token: str | None = None, endpoint: str | None = None,
             private: bool = False, format: str = "adapterkit", **options: Any) -> str:
        """Push adapter ``name`` to the hub repo ``owner/name`` (created when missing, ``private``
        if asked) in the adapterkit or PEFT ``format``; returns the commit id. ``endpoint``
        defaults to ``$ADAPTERKIT_HUB``; ``options``: ``branch``, ``message``, ``cache_dir``. See
        ``adapterkit.io.hub.push.push_adapter``."""
        from .io.hub.push import push_adapter

        return push_adapter(self, name, repo, token=token, endpoint=endpoint, private=private,
                            format=format, **options)

    def retrieve(self, query: str, k: int = 3, **options: Any) -> Block | str:
        """Search the hub for the ``k`` best adapters for ``query`` that fit this model and that
        the token can read, pull them, activate a weighted ``Average`` (``mode="average"``) or
        ``Stack`` (``mode="stack"``) of them with weights from their scores, and return the
        composition it activated. What was chosen (repo, revision, commit, score, weight,
        reason) and what was skipped is in ``kit.last_retrieval`` (a ``Retrieval``, with
        ``report()``). ``options``: ``mode``, ``weighting`` (``normalize`` or ``softmax``),
        ``temperature``, ``endpoint``, ``token``, ``cache_dir``, ``candidates`` and search
        filters. See ``adapterkit.io.hub.retrieve``."""
        from .io.hub.retrieve import retrieve

        got = retrieve(self, query, k, **options)
        self.last_retrieval = got
        return got.composition

    def search(self, query: str | None = None, **options: Any) -> list[Any]:
        """Search the hub for adapters that fit this kit's model (its module paths and weight
        shapes); ``options`` as for ``adapterkit.io.hub.search.search`` (``endpoint``, ``token``,
        ``limit``, ``mode``, ``sort``, filters). Returns records with ``repo_id``, ``score``,
        ``metadata``."""
        from .io.hub.search import search

        options.setdefault("compatible_with", self.model)
        return search(query, **options)

    # -- reporting ---------------------------------------------------------------------------
    def base_parameter_count(self) -> int:
        adapter = {id(p) for p in self.parameters()}
        return sum(p.numel() for p in self.model.parameters() if id(p) not in adapter)

    def summary(self) -> SummaryTable:
        base = self.base_parameter_count()
        rows = []
        for name, rec in self._records.items():
            n = sum(p.numel() for p in rec.parameters())
            rows.append({
                "name": name, "method": rec.spec.name, "trainable": n,
                "% of base": 100.0 * n / max(base, 1), "sites": len(rec.sites),
                "merged": rec.merged, "active": name in self.active,
            })
        return SummaryTable(rows, base_parameters=base)

    def __repr__(self) -> str:
        return f"AdapterKit({type(self.model).__name__}, adapters={self.names}, active={self.active})"


def extract_lora(base_model: nn.Module, finetuned_model: nn.Module, rank: int | None = None,
                 energy: float | None = 0.9, targets: tuple[str, ...] = ("all-linear",),
                 name: str = "extracted", include_heads: tuple[str, ...] = (),
                 add: bool = True, progress: bool = False) -> ExtractionReport:
    """Extract a LoRA adapter approximating ``finetuned_model - base_model`` at ``targets``
    (roles or patterns, resolved on ``base_model``). ``rank`` (fixed per layer) wins over
    ``energy``; with both None every layer keeps its full (exact) rank. With ``add`` the
    adapter is added to ``AdapterKit(base_model)`` as ``name``, with the ``include_heads``
    modules copied from the fine-tune into the base model and saved with the adapter. Sites
    whose weight did not change are left out; ``progress`` shows a bar over the sites. The model
    is unchanged if this raises."""
    return extract(AdapterKit(base_model), finetuned_model, rank, energy, tuple(targets), name,
                   tuple(include_heads), add, progress)
