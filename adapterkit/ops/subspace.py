"""Principal subspaces of several LoRA adapters, for EigenLoRA (``adapterkit.EigenLoRA``).

Kaushik et al. 2025, "EigenLoRAx: Recycling Adapters to Find Principal Subspaces for
Resource-Efficient Adaptation and Inference" (arXiv:2502.04700). Per site, the ``r_i`` rows of
every adapter's ``A`` (vectors in R^in) and the ``r_i`` columns of every ``B`` (vectors in
R^out) are stacked, centred (the paper's PCA; ``center=False`` keeps the raw span) and
decomposed by SVD; the top ``k`` right singular vectors are the principal components. When a
stack has fewer than ``k`` components (``sum r_i`` is small), the rest are random unit vectors
orthogonalised against the others (the paper's Gram-Schmidt "pseudo-PCs" for low-resource
settings), drawn from a seeded generator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.checkpoint import read_checkpoint
from ..errors import AdapterError
from .lowrank.model import numerical_rank

FORMAT = "adapterkit-eigenlora-basis"


class SubspaceError(AdapterError, ValueError):
    """The source adapters are not LoRA adapters of one base model on the same sites."""


@dataclass
class SubspaceReport:
    """Per site: the share of the stacked vectors' variance the ``k`` components explain (for A
    and B) and how many components are real (the rest are orthogonal random fill)."""

    path: str
    k: int
    sources: list[str]
    explained_A: dict[str, float] = field(default_factory=dict)
    explained_B: dict[str, float] = field(default_factory=dict)
    real_components: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "k": self.k, "sources": self.sources, "sites": len(self.explained_A),
                "min_explained_A": min(self.explained_A.values(), default=1.0),
                "min_explained_B": min(self.explained_B.values(), default=1.0),
                "min_real_components": min(self.real_components.values(), default=0)}


def _load_lora(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[Tensor, Tensor]]]:
    meta, tensors = read_checkpoint(directory)
    if "quantization" in meta:
        from .quantize.model import dequantize_checkpoint

        tensors = dequantize_checkpoint(meta, tensors, str(directory))
    if meta.get("method") != "lora":
        raise SubspaceError(f"{directory} holds a {meta.get('method')} adapter; "
                            "principal subspaces are built from LoRA adapters")
    sites = [s[0] for s in meta.get("base", {}).get("sites", [])]
    factors = {s: (tensors[f"{s}.lora_A"].flatten(1).double(), tensors[f"{s}.lora_B"].double())
               for s in sites}
    return meta, factors


def _check_compatible(metas: list[dict[str, Any]], loaded: list[dict[str, tuple[Tensor, Tensor]]],
                      names: list[str]) -> None:
    types = {n: m.get("base", {}).get("model_type") for n, m in zip(names, metas)}
    if len(set(types.values())) > 1:
        raise SubspaceError(f"the adapters come from different base models: model_type {types}")
    sites = list(loaded[0])
    for n, ad in zip(names[1:], loaded[1:]):
        if list(ad) != sites:
            raise SubspaceError(f"{names[0]} and {n} are on different sites: only in the first "
                                f"{sorted(set(sites) - set(ad))}, only in {n} {sorted(set(ad) - set(sites))}")
        shapes = [s for s in sites if (ad[s][0].shape[1], ad[s][1].shape[0])
                  != (loaded[0][s][0].shape[1], loaded[0][s][1].shape[0])]
        if shapes:
            raise SubspaceError(f"{names[0]} and {n} differ in (in, out) sizes at {shapes[:3]}: "
                                "they come from different base models")


def components(vectors: Tensor, k: int, center: bool,
               generator: torch.Generator) -> tuple[Tensor, float, int]:
    """Top-``k`` principal directions of the rows of ``vectors`` (n, d) as columns (d, k), the
    explained share of their variance, and how many are real (the rest are random fill)."""
    d = vectors.shape[1]
    if k > d:
        raise SubspaceError(f"k={k} exceeds the dimension {d} of the vectors")
    x = vectors - vectors.mean(dim=0, keepdim=True) if center else vectors
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # vh (m, d)
    real = min(k, numerical_rank(s, tuple(x.shape)))
    total = float((s ** 2).sum())
    explained = float((s[:real] ** 2).sum()) / total if total else 1.0
    basis = vh[:real].T  # (d, real)
    if real < k:
        fill = torch.randn(d, k - real, generator=generator, dtype=basis.dtype)
        fill = fill - basis @ (basis.T @ fill)  # orthogonal to the real components
        basis = torch.cat([basis, torch.linalg.qr(fill).Q], dim=1)
    return basis, explained, real


def principal_subspace(sources: list[str | os.PathLike], k: int, out: str | os.PathLike,
                       center: bool = True, seed: int = 0) -> SubspaceReport:
    """Build the per-site bases of ``k`` components from the saved LoRA adapters ``sources``
    and write them to the safetensors file ``out`` (``<site>.A``: (in, k), ``<site>.B``: (out,
    k), float32), ready for ``EigenLoRA(basis=out)``."""
    from safetensors.torch import save_file

    if not sources:
        raise SubspaceError("need at least one source adapter")
    if not isinstance(k, int) or k <= 0:
        raise SubspaceError(f"k must be a positive integer, got {k!r}")
    names = [str(s) for s in sources]
    pairs = [_load_lora(s) for s in sources]
    _check_compatible([m for m, _ in pairs], [f for _, f in pairs], names)
    gen = torch.Generator().manual_seed(seed)
    report = SubspaceReport(str(out), k, names)
    tensors: dict[str, Tensor] = {}
    for site in pairs[0][1]:
        rows_a = torch.cat([f[site][0] for _, f in pairs])  # (sum r_i, in)
        cols_b = torch.cat([f[site][1].T for _, f in pairs])  # (sum r_i, out)
        basis_a, report.explained_A[site], real_a = components(rows_a, k, center, gen)
        basis_b, report.explained_B[site], real_b = components(cols_b, k, center, gen)
        report.real_components[site] = min(real_a, real_b)
        tensors[f"{site}.A"] = basis_a.float().contiguous()
        tensors[f"{site}.B"] = basis_b.float().contiguous()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "k": str(k), "center": str(center),
            "model_type": str(pairs[0][0].get("base", {}).get("model_type")),
            "sources": json.dumps(names)}
    save_file(tensors, str(out), metadata=meta)
    return report
