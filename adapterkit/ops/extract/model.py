"""A LoRA adapter from a full fine-tune: ``adapterkit.extract_lora(base, finetuned, ...)``.

Each targeted Linear/Conv1D weight difference ``W_ft - W_base`` is factorised by truncated SVD
(:func:`adapterkit.ops.extract_lora_from_weights`), per layer to a fixed ``rank`` or to the
smallest rank keeping ``energy`` of ``sum(sigma^2)``, the energy criterion of post-hoc LoRA
extraction (PHLoRA); by Eckart-Young this is the best rank-k approximation. Work goes one layer at
a time: the two weights of a site are read (views, no copies of the model) and only the kept
factors stay.

A LoRA captures only the targeted weights. What else the fine-tune changed (biases, LayerNorms,
embeddings, untargeted layers, the task head) is measured and reported as a share of the total
squared delta norm; task heads named in ``include_heads`` are copied whole into the base model
and saved with the adapter as its trained heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...core.progress import progress as bar
from ...core.sites import dense_weight, is_linear_like
from ...core.typed import weight_of
from ...errors import AdapterError
from ..lowrank.model import build_lora, exact_pattern, lora_config
from ..lowrank.tensors import LoRAFactors
from .tensors import extract_lora_from_weights


class ExtractError(AdapterError, ValueError):
    """The two models do not correspond (missing modules, different shapes) or a bad option."""


@dataclass
class ExtractionReport:
    """Per-site rank / retained energy / sizes, and where the rest of the fine-tune's change is.

    ``share_*`` are fractions of the total squared delta norm over all parameters of equal
    shape: ``kept`` is what the LoRA reproduces, ``lost_in_targets`` what its truncation drops,
    ``untargeted`` what lies in parameters no LoRA covers (biases, norms, embeddings, other
    layers), ``heads`` what lies in ``include_heads`` (copied exactly)."""

    name: str
    sites: dict[str, dict[str, float]]
    adapter_params: int
    full_params: int
    share_kept: float
    share_lost_in_targets: float
    share_untargeted: float
    share_heads: float
    delta_norm: float
    top_untargeted: list[tuple[str, float]] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    heads: tuple[str, ...] = ()
    factors: dict[str, LoRAFactors] = field(default_factory=dict, repr=False)

    @property
    def size_ratio(self) -> float:
        """Adapter parameters over the parameters of the full targeted deltas."""
        return self.adapter_params / max(self.full_params, 1)

    def summary(self) -> dict[str, Any]:
        """JSON-ready form (without the factors)."""
        ranks = [int(s["rank"]) for s in self.sites.values()]
        return {
            "sites": len(self.sites), "rank_min": min(ranks, default=0),
            "rank_max": max(ranks, default=0), "adapter_params": self.adapter_params,
            "full_delta_params": self.full_params, "size_ratio": self.size_ratio,
            "min_energy": min((s["energy"] for s in self.sites.values()), default=1.0),
            "share_kept": self.share_kept, "share_lost_in_targets": self.share_lost_in_targets,
            "share_untargeted": self.share_untargeted, "share_heads": self.share_heads,
            "top_untargeted": self.top_untargeted, "mismatched": self.mismatched,
            "heads": list(self.heads),
        }

    def __str__(self) -> str:
        s = self.summary()
        return (f"{self.name}: {s['sites']} sites, rank {s['rank_min']}..{s['rank_max']}, "
                f"{self.adapter_params:,} params = {100 * self.size_ratio:.2f}% of the full deltas; "
                f"energy >= {s['min_energy']:.3f}; of the total squared change the LoRA keeps "
                f"{100 * self.share_kept:.1f}%, truncation drops {100 * self.share_lost_in_targets:.1f}%, "
                f"untargeted parameters hold {100 * self.share_untargeted:.1f}%"
                + (f", heads {100 * self.share_heads:.1f}% (copied)" if self.heads else ""))


def _sites(kit: Any, targets: tuple[str, ...], ft_modules: dict[str, nn.Module]) -> list[str]:
    finder = kit.finder()
    paths = finder.paths(targets)
    finder.check_types(paths, is_linear_like, "Linear and Conv1D", "extract_lora")
    bad = [p for p in paths if p not in ft_modules]
    bad += [f"{p} (shape {tuple(finder.module(p).weight.shape)} vs "
            f"{tuple(weight_of(ft_modules[p]).shape)})" for p in paths
            if p in ft_modules and finder.module(p).weight.shape != ft_modules[p].weight.shape]
    if bad:
        raise ExtractError(f"the fine-tuned model lacks or reshapes targeted modules: {bad}")
    return paths


def _head_paths(kit: Any, include_heads: tuple[str, ...], ft_modules: dict[str, nn.Module]) -> list[str]:
    if not include_heads:
        return []
    from ...core.records import head_state

    paths = kit.finder().paths(include_heads)

    def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in head_state(module).items()}

    bad = [p for p in paths if p not in ft_modules
           or shapes(kit.model.get_submodule(p)) != shapes(ft_modules[p])]
    if bad:
        raise ExtractError(f"heads missing or of another shape in the fine-tuned model: {bad}")
    return paths


def _norm_shares(base: nn.Module, ft: nn.Module, sites: dict[str, dict[str, float]],
                 heads: list[str]) -> dict[str, Any]:
    """Squared delta norms of every parameter, split into kept / lost / untargeted / heads."""
    ft_params = dict(ft.named_parameters())
    site_weights = {f"{s}.weight": s for s in sites}
    kept = lost = untargeted = in_heads = 0.0
    others: list[tuple[str, float]] = []
    mismatched = []
    for name, p in base.named_parameters():
        if ".adapterkit." in f".{name}":
            continue
        q = ft_params.get(name)
        if q is None or q.shape != p.shape:
            mismatched.append(name)
            continue
        d2 = float((q.detach().double() - p.detach().double()).pow(2).sum())
        if name in site_weights:
            e = sites[site_weights[name]]["energy"]
            kept, lost = kept + e * d2, lost + (1 - e) * d2
        elif any(name.startswith(h + ".") for h in heads):
            in_heads += d2
        else:
            untargeted += d2
            others.append((name, d2))
    total = kept + lost + untargeted + in_heads
    div = total or 1.0
    others.sort(key=lambda x: -x[1])
    return {"share_kept": kept / div if total else 1.0, "share_lost_in_targets": lost / div,
            "share_untargeted": untargeted / div, "share_heads": in_heads / div,
            "delta_norm": total ** 0.5, "mismatched": mismatched,
            "top_untargeted": [(n, d / div) for n, d in others[:5]]}


def extract(kit: Any, finetuned_model: nn.Module, rank: int | None = None,
            energy: float | None = 0.9, targets: tuple[str, ...] = ("all-linear",),
            name: str = "extracted", include_heads: tuple[str, ...] = (),
            add: bool = True, progress: bool = False) -> ExtractionReport:
    """Extract a LoRA adapter approximating ``finetuned_model - kit.model`` (see
    :func:`adapterkit.extract_lora`, the model-level entry point)."""
    base_model = kit.model
    if add:
        kit._check_new_name(name)
    if any(r.merged for r in kit._records.values()):
        raise ExtractError("the base model has merged adapters: unmerge them first")
    ft_modules = dict(finetuned_model.named_modules())
    paths = _sites(kit, tuple(targets), ft_modules)
    heads = _head_paths(kit, tuple(include_heads), ft_modules)
    factors: dict[str, LoRAFactors] = {}
    sites: dict[str, dict[str, float]] = {}
    base_modules = kit.finder().modules
    with torch.no_grad():
        for path in bar(paths, len(paths), "extract", progress):  # one layer at a time
            w_b, w_f = dense_weight(base_modules[path]), dense_weight(ft_modules[path])
            f, kept = extract_lora_from_weights(w_b.detach(), w_f.detach(), rank, energy)
            sites[path] = {"rank": f.rank, "energy": kept, "params": f.num_params,
                           "full_params": w_b.numel()}
            if f.rank > 0:
                factors[path] = f
    if not factors:
        raise ExtractError(f"no targeted weight differs between the two models (targets {targets})")
    shares = _norm_shares(base_model, finetuned_model, sites, heads)
    report = ExtractionReport(
        name, sites, sum(int(s["params"]) for s in sites.values()),
        sum(int(s["full_params"]) for s in sites.values()), heads=tuple(heads), factors=factors,
        **shares)
    if add:
        _add(kit, report, tuple(targets) if len(factors) == len(paths) else None, finetuned_model)
    return report


def _add(kit: Any, report: ExtractionReport, targets: tuple[str, ...] | None,
         finetuned_model: nn.Module) -> None:
    ranks = {s: f.rank for s, f in report.factors.items()}
    config = lora_config(ranks, targets=targets or tuple(exact_pattern(s) for s in ranks))
    record = build_lora(kit, report.name, config, report.factors)
    with torch.no_grad():
        for path in report.heads:
            kit.model.get_submodule(path).load_state_dict(
                finetuned_model.get_submodule(path).state_dict(), strict=False)
    record.heads = report.heads
    record.extra["extraction"] = {k: v for k, v in report.summary().items() if k != "top_untargeted"}
    kit.attach(record)
