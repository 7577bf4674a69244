"""EigenLoRA: LoRA whose factors live in a principal subspace recycled from other adapters.

Kaushik et al. 2025, "EigenLoRAx: Recycling Adapters to Find Principal Subspaces for
Resource-Efficient Adaptation and Inference" (arXiv:2502.04700). For each site, the rows of the
``A`` matrices and the columns of the ``B`` matrices of several trained LoRA adapters are stacked
and their top-``K`` principal components computed (``adapterkit.principal_subspace``), giving
orthonormal bases ``V_A``: (in, K) and ``V_B``: (out, K). A new adapter learns only the
coefficients (the paper's "loadings") ``C_A``, ``C_B``: (K, r) of its factors on those bases::

    A = (V_A C_A)^T   (r, in)        B = V_B C_B   (out, r)
    delta W = s * B A = s * V_B C_B C_A^T V_A^T,   s = alpha / r

so a site trains ``2 K r`` numbers instead of LoRA's ``r (in + out)``, and the adapter merges
like a LoRA. ``C_B`` starts at zero (the adapter starts as the identity) and ``C_A`` uniform in
``+-1/sqrt(K)`` (rows of ``A`` of about LoRA's initial norm). The bases are frozen buffers read
from the ``basis`` safetensors file when the adapter is built and are not saved with it: one
basis serves many adapters. The adapter records the file's SHA-256 (``digest``, filled in when
it is added), so a different file at that path is refused rather than silently giving other
outputs. Loading looks for the basis at its recorded path, then by its file name in the adapter's
directory and that directory's parent (a basis moved together with its adapters).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_positive
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of, is_conv1d, is_linear_like
from ..core.typed import factory, weight_of
from ..errors import ConfigError, TargetError
from . import register
from .lora import _as_targets


@dataclass(frozen=True)
class EigenLoRA:
    """Config of an EigenLoRA adapter on the principal subspace stored at ``basis``.

    ``k``: how many leading components of the basis to use (None: all it holds); ``r``: the rank
    of the factors; ``alpha``: scale numerator (``s = alpha / r``); ``targets``: roles or patterns
    (None: every site the basis has); ``digest``: the SHA-256 (hex) the basis file must have
    (None: filled in from the file when the adapter is added).
    """

    basis: str
    k: int | None = None
    r: int = 8
    alpha: float = 8
    targets: tuple[str, ...] | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.basis, str) or not self.basis:
            raise ConfigError(f"EigenLoRA.basis must be the path of a basis file, got {self.basis!r}")
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"EigenLoRA.r must be a positive integer, got {self.r!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k <= 0):
            raise ConfigError(f"EigenLoRA.k must be a positive integer or None, got {self.k!r}")
        check_positive("EigenLoRA", "alpha", self.alpha)
        if self.targets is not None:
            object.__setattr__(self, "targets", _as_targets(self.targets))
        if self.digest is not None and (not isinstance(self.digest, str) or len(self.digest) != 64):
            raise ConfigError(f"EigenLoRA.digest must be a 64-character SHA-256 hex string, got "
                              f"{self.digest!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def relocated(self, directory: str | os.PathLike) -> EigenLoRA:
        """This config with ``basis`` found for an adapter saved in ``directory``: the recorded
        path if the file is there, else the same file name in ``directory`` or its parent."""
        if Path(self.basis).is_file():
            return self
        d = Path(directory)
        for candidate in (d / Path(self.basis).name, d.parent / Path(self.basis).name):
            if candidate.is_file():
                return replace(self, basis=str(candidate))
        return self


def _resolve(config: EigenLoRA, finder: SiteFinder) -> EigenLoRA:
    """``config`` with the digest of its basis file, which must match a recorded one."""
    found = _load_basis(config.basis, finder)[1]
    if config.digest is None:
        return replace(config, digest=found)
    if config.digest != found:
        raise ConfigError(f"EigenLoRA basis file {config.basis!r} is not the one this adapter was "
                          f"trained on: its SHA-256 is {found[:16]}..., the adapter records "
                          f"{config.digest[:16]}...")
    return config


def read_basis(path: str, finder: SiteFinder | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a basis file (``<site>.A``: (in, K), ``<site>.B``: (out, K)), cached per plan."""
    return _load_basis(path, finder)[0]


def _load_basis(path: str, finder: SiteFinder | None) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, SHA-256 hex) of a basis file, from one read of its bytes; cached per plan."""
    key = ("eigenlora.basis", path)
    if finder is not None and key in finder.memo:
        return cast("tuple[dict[str, torch.Tensor], str]", finder.memo[key])
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not Path(path).is_file():
        raise ConfigError(f"EigenLoRA basis file {path!r} not found (make one with "
                          "adapterkit.principal_subspace)")
    try:
        data = Path(path).read_bytes()
        loaded = load(data), hashlib.sha256(data).hexdigest()
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"EigenLoRA basis file {path!r} is unreadable: {exc}") from None
    if finder is not None:
        finder.memo[key] = loaded
    return loaded


def basis_sites(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k[:-2] for k in tensors if k.endswith(".A") and k[:-2] + ".B" in tensors]


class EigenLoRAModule(AdapterModule):
    """Frozen buffers ``basis_A``: (in, K), ``basis_B``: (out, K) (not saved); trainable
    ``coef_A``, ``coef_B``: (K, r). For ``x``: (..., in) the delta is
    ``s * ((x @ V_A C_A) @ (V_B C_B)^T)``: (..., out)."""

    kind = MethodKind.WEIGHT_DELTA
    basis_A: torch.Tensor
    basis_B: torch.Tensor

    def __init__(self, base: nn.Module, basis_a: torch.Tensor, basis_b: torch.Tensor, r: int,
                 scale: float) -> None:
        super().__init__()
        kw = factory(weight_of(base))
        self.register_buffer("basis_A", basis_a.to(**kw).contiguous(), persistent=False)
        self.register_buffer("basis_B", basis_b.to(**kw).contiguous(), persistent=False)
        k = basis_a.shape[1]
        self.coef_A = nn.Parameter(torch.empty(k, r, **kw).uniform_(-k ** -0.5, k ** -0.5))
        self.coef_B = nn.Parameter(torch.zeros(k, r, **kw))
        self.scale = scale

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` as a LoRA's: A (r, in), B (out, r)."""
        return (self.basis_A @ self.coef_A).t(), self.basis_B @ self.coef_B

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        a, b = self.factors()
        return (F.linear(F.linear(x.to(a.dtype), a), b) * self.scale).to(h.dtype)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        a, b = self.factors()
        dw = (b @ a) * self.scale  # (out, in)
        return dw.t() if is_conv1d(base) else dw


def _find_sites(config: EigenLoRA, finder: SiteFinder) -> list[Site]:
    available = basis_sites(read_basis(config.basis, finder))
    if config.targets is None:
        absent = [s for s in available if s not in finder.modules]
        if absent:
            raise TargetError(f"the EigenLoRA basis {config.basis!r} has sites this model lacks: "
                              f"{absent[:5]} (it was built for another model)")
        paths = [p for p in finder.modules if p in set(available)]
    else:
        paths = finder.paths(config.targets)
        outside = [p for p in paths if p not in set(available)]
        if outside:
            raise TargetError(f"targets {outside[:5]} have no components in the basis "
                              f"{config.basis!r}; its sites: {available[:8]}")
    finder.check_types(paths, is_linear_like, "Linear and Conv1D", "EigenLoRA")
    return [Site(host=p) for p in paths]


def _build(config: EigenLoRA, site: Site, finder: SiteFinder) -> EigenLoRAModule:
    base = finder.module(site.host)
    tensors = read_basis(config.basis, finder)
    a, b = tensors[f"{site.host}.A"], tensors[f"{site.host}.B"]
    n_in, n_out = features_of(base)
    if a.shape[0] != n_in or b.shape[0] != n_out:
        raise ConfigError(f"{site.host}: basis A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
                          f"in={n_in}, out={n_out}")
    k = config.k if config.k is not None else min(a.shape[1], b.shape[1])
    if k > min(a.shape[1], b.shape[1]):
        raise ConfigError(f"EigenLoRA.k={k} but the basis holds {min(a.shape[1], b.shape[1])} "
                          f"components at {site.host}")
    return EigenLoRAModule(base, a[:, :k], b[:, :k], config.r, config.scale)


register(MethodSpec(
    name="eigenlora", config_cls=EigenLoRA, kind=MethodKind.WEIGHT_DELTA, mergeable=True, routable=True,
    find_sites=_find_sites, build=_build, paper="Kaushik et al. 2025, arXiv:2502.04700",
    sites_used="Linear, Conv1D (sites of the basis, or targets)",
    resolve=_resolve,
))
