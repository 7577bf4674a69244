"""Combining trained adapters of one kit into a new adapter (``kit.combine``).

Thin model-level wrappers over the pure functions of :mod:`adapterkit.ops`:

* ``cat`` (LoRA): rank concatenation; the result's delta is exactly ``sum_i w_i * delta_i``,
  with ``r = sum r_i`` (per site).
* ``svd`` (LoRA): the same exact sum re-factorised by truncated SVD to ``rank`` or to the
  smallest rank keeping ``energy`` of ``sum(sigma^2)`` per site (Eckart-Young); without either
  it is exact. The report gives the retained energy per site.
* ``linear``: parameter averaging, MerA (He et al. 2023, "MerA: Merging Pretrained Adapters For
  Few-Shot Learning"), for adapters of any method with equal configs (so equal shapes).
* ``task_arithmetic`` (Ilharco et al. 2023), ``ties`` (Yadav et al. 2023, TIES-Merging),
  ``dare_linear`` / ``dare_ties`` (Yu et al. 2023, DARE): on LoRA adapters they act on the
  per-site weight deltas ``scale * B @ A``, and the merged delta is re-factorised by SVD:
  exactly (numerical rank) unless ``rank`` or ``energy`` is given. On other methods they act on
  the parameters themselves, taken as task vectors (equal configs needed).

What is exact: ``cat``; ``svd`` and LoRA ``task_arithmetic`` without ``rank``/``energy`` (up to
float rounding). What is approximate by design: ``linear`` (the average of ``B`` times the
average of ``A`` is not the average of ``B @ A``), TIES and DARE (they trim, elect signs or drop
entries), and any truncation (its error is the discarded energy, reported per site).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from ...errors import AdapterError
from ..lowrank.model import build_lora, lora_config, read_factors, refactor, site_ranks
from ..lowrank.tensors import LoRAFactors, compute_dtype
from . import tensors as ops

if TYPE_CHECKING:
    from ...core.records import AdapterRecord
    from ...kit import AdapterKit

HOWS = ("cat", "svd", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
_LORA_ONLY = ("cat", "svd")
_DELTA_HOWS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
#: config fields that only affect initialisation or training, ignored when configs must agree
_INIT_FIELDS = frozenset({"dropout", "init", "init_ones", "d_initial"})


class CombineError(AdapterError, ValueError):
    """The adapters cannot be combined the way asked (methods, sites, shapes or configs differ)."""


@dataclass
class CombineReport:
    """What ``kit.combine`` made: per-site ranks and retained energy (LoRA results), whether the
    result's delta is exactly the weighted sum of the inputs' deltas, and a note on why not."""

    name: str
    how: str
    method: str
    weights: dict[str, float]
    exact: bool
    ranks: dict[str, int] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def min_energy(self) -> float:
        return min(self.energy.values(), default=1.0)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        ranks = sorted(set(self.ranks.values()))
        return (f"{self.name}: {self.how} of {self.weights} ({self.method}); exact={self.exact}"
                + (f", ranks {ranks}, min energy {self.min_energy:.4f}" if self.ranks else "")
                + (f"; {self.note}" if self.note else ""))


def _check_weights(kit: AdapterKit, weights: Mapping[str, float]) -> list[AdapterRecord]:
    if not isinstance(weights, Mapping) or not weights:
        raise CombineError(f"weights must be a non-empty {{adapter name: weight}} dict, got {weights!r}")
    bad = {n: w for n, w in weights.items() if isinstance(w, bool) or not isinstance(w, (int, float))}
    if bad:
        raise CombineError(f"weights must be numbers, got {bad}")
    return [kit.record(n) for n in weights]


def _check_same_sites(records: list[AdapterRecord]) -> None:
    first = records[0]
    methods = {r.name: r.spec.name for r in records}
    if len(set(methods.values())) > 1:
        raise CombineError(f"cannot combine adapters of different methods: {methods}")
    pissa = [r.name for r in records if str(getattr(r.config, "init", "")).startswith("pissa")]
    if pissa:
        raise CombineError(f"{pissa} are PiSSA adapters, whose deltas hold only on their own "
                           "residual base; convert them first (adapterkit.pissa_as_lora)")
    hosts = [s.host for s in first.sites]
    for rec in records[1:]:
        other = [s.host for s in rec.sites]
        if other != hosts:
            only_a = sorted(set(hosts) - set(other))
            only_b = sorted(set(other) - set(hosts))
            raise CombineError(
                f"adapters {first.name!r} and {rec.name!r} are on different sites: only in "
                f"{first.name!r}: {only_a or 'none'}; only in {rec.name!r}: {only_b or 'none'}"
                + ("" if only_a or only_b else " (same sites, different order)")
            )


def _check_same_config(records: list[AdapterRecord], how: str) -> None:
    first = records[0]
    for rec in records[1:]:
        diff = [f"{f.name} ({getattr(first.config, f.name)!r} vs {getattr(rec.config, f.name)!r})"
                for f in dataclasses.fields(first.config) if f.name not in _INIT_FIELDS
                and getattr(first.config, f.name) != getattr(rec.config, f.name)]
        if diff:
            hint = " (use how='cat' or 'svd' for LoRA adapters of different ranks)" \
                if first.spec.name == "lora" else ""
            raise CombineError(
                f"how={how!r} combines parameters one by one, which needs equal configs; "
                f"{first.name!r} and {rec.name!r} differ in " + ", ".join(diff) + hint
            )


def _plain_states(record: AdapterRecord) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(parameters, buffers) of an adapter by ``host.key``, values as the forward sees them."""
    from ...core.records import plain_state

    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    for host, module in record.modules.items():
        buffer_names = {n for n, _ in module.named_buffers()}
        for key, t in plain_state(module).items():
            (buffers if key in buffer_names else params)[f"{host}.{key}"] = t.detach()
    return params, buffers


def _merge_states(how: str, states: list[dict[str, torch.Tensor]], w: list[float],
                  density: float | None, seed: int | None) -> dict[str, torch.Tensor]:
    if how == "linear":
        return ops.combine_linear(states, w)
    if how == "task_arithmetic":
        return ops.combine_task_arithmetic(states, w)
    if how == "ties":
        return ops.ties(states, w, 0.2 if density is None else density)
    method: Literal["linear", "ties"] = "linear" if how == "dare_linear" else "ties"
    return ops.dare(states, w, 0.5 if density is None else density, method=method, seed=seed)


def _combine_states(kit: AdapterKit, name: str, how: str, records: list[AdapterRecord],
                    w: list[float], density: float | None,
                    seed: int | None) -> tuple[AdapterRecord, CombineReport]:
    """Parameter-level merging (any method, equal configs); buffers must agree."""
    _check_same_config(records, how)
    pairs = [_plain_states(r) for r in records]
    for rec, (_, buffers) in zip(records[1:], pairs[1:]):
        differ = [k for k, t in pairs[0][1].items() if not torch.equal(t, buffers[k])]
        if differ:
            raise CombineError(f"frozen buffers of {records[0].name!r} and {rec.name!r} differ "
                               f"({differ[:3]}...): they do not share one basis")
    merged = {**_merge_states(how, [p for p, _ in pairs], w, density, seed), **pairs[0][1]}
    record = kit.plan(name, records[0].config)
    with torch.no_grad():
        for host, module in record.modules.items():
            for key, t in module.state_dict(keep_vars=True).items():
                t.copy_(merged[f"{host}.{key}"])
    note = "parameters merged one by one; the delta is not the weighted sum of the deltas"
    return record, CombineReport(name, how, record.spec.name, {}, exact=False, note=note)


def _lora_deltas(factors: list[dict[str, LoRAFactors]]) -> list[dict[str, torch.Tensor]]:
    """Per-site (out, in) deltas ``scale * B @ A``, in float32 (float64 stays float64)."""
    out = []
    for ad in factors:
        cdt = compute_dtype(next(iter(ad.values())).A.dtype)
        out.append({site: f.scale * (f.B.to(cdt) @ f.A.to(cdt)) for site, f in ad.items()})
    return out


def _combine_lora(kit: AdapterKit, name: str, how: str, records: list[AdapterRecord],
                  w: list[float], opts: dict[str, Any]) -> tuple[AdapterRecord, CombineReport]:
    """cat / svd / delta-level merges of LoRA adapters, re-factorised into a new LoRA."""
    factors = [read_factors(r) for r in records]
    rank, energy = opts.get("rank"), opts.get("energy")
    truncated = rank is not None or energy is not None
    out: dict[str, LoRAFactors]
    kept: dict[str, float]
    if how == "cat":
        out, kept = ops.combine_lora_cat(factors, w), {}
    elif how == "svd":
        out, kept = ops.combine_lora_svd(factors, w, rank=rank, energy=energy)
    else:
        merged = _merge_states(how, _lora_deltas(factors), w, opts.get("density"), opts.get("seed"))
        dtype = factors[0][next(iter(merged))].A.dtype
        pairs = {site: refactor(d, rank, energy, dtype) for site, d in merged.items()}
        out, kept = {s: f for s, (f, _) in pairs.items()}, {s: e for s, (_, e) in pairs.items()}
    first = records[0].config
    config = lora_config(site_ranks(out), targets=first.targets, dropout=first.dropout)
    record = build_lora(kit, name, config, out)
    exact = how == "cat" or (how in ("svd", "task_arithmetic") and not truncated)
    note = {"cat": "", "svd": "" if exact else "truncated SVD of the exact sum",
            "task_arithmetic": "" if exact else "truncated SVD of the exact sum"}.get(
        how, f"{how} merge of the per-site deltas, re-factorised by SVD"
        + (" and truncated" if truncated else ""))
    report = CombineReport(name, how, "lora", {}, exact, site_ranks(out),
                           {s: kept.get(s, 1.0) for s in out}, note)
    return record, report


def combine(kit: AdapterKit, name: str, weights: Mapping[str, float], how: str = "cat", *,
            rank: int | None = None, energy: float | None = None, density: float | None = None,
            seed: int | None = None) -> CombineReport:
    """Add adapter ``name`` combining the adapters named in ``weights`` (see the module doc);
    the kit and model are unchanged if this raises. ``density``: TIES keeps the top
    ``density`` share by magnitude (default 0.2, the paper's), DARE keeps entries with that
    probability (default 0.5); ``seed`` makes DARE reproducible."""
    if how not in HOWS:
        raise CombineError(f"unknown how={how!r}; use one of {list(HOWS)}")
    kit._check_new_name(name)
    records = _check_weights(kit, weights)
    _check_same_sites(records)
    method = records[0].spec.name
    if how in _LORA_ONLY and method != "lora":
        raise CombineError(f"how={how!r} combines LoRA adapters only; {records[0].name!r} uses "
                           f"{method}: use 'linear', 'task_arithmetic', 'ties' or 'dare_*'")
    w = [float(v) for v in weights.values()]
    if method == "lora" and how != "linear":
        opts = {"rank": rank, "energy": energy, "density": density, "seed": seed}
        record, report = _combine_lora(kit, name, how, records, w, opts)
    else:
        if rank is not None or energy is not None:
            raise CombineError(f"rank/energy apply to LoRA results only (how={how!r} on {method})")
        record, report = _combine_states(kit, name, how, records, w, density, seed)
    report.weights = dict(zip(weights, w))
    record.extra["combined"] = {"how": how, "weights": report.weights, "exact": report.exact}
    kit.attach(record)
    return report
