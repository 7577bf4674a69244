"""SHiRA: sparse high-rank adapters.

Bhardwaj et al., 2024, "Sparse High Rank Adapters" (arXiv:2406.13175). A fixed mask picks a
small set of entries of each target weight (1-2% in the paper); training changes only those
entries, so the delta is sparse but of high rank, and switching adapters on a merged model is a
scatter of the changed entries into the weights. The sizes and the random mask follow PEFT's
``ShiraConfig`` (``peft/tuners/shira``): ``r`` gives ``r * (in + out)`` entries per target, as
many as a rank-``r`` LoRA has, and the random mask is ``torch.randperm`` from a CPU generator
seeded with ``random_seed`` (unseeded: a fresh generator's default seed), the same for every site.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, dense_weight, features_of, is_conv1d
from ..core.typed import weight_of
from ..errors import ConfigError
from . import register
from .lora import _as_targets

#: share of each target's entries that a config with neither ``r`` nor ``fraction`` trains
DEFAULT_FRACTION = 0.01


@dataclass(frozen=True)
class SHiRA:
    """Config of a SHiRA adapter: ``W' = W + S``, ``S`` zero outside a fixed mask of entries.

    Per target weight (out, in) the mask holds ``k`` entries: ``r * (in + out)`` with ``r`` (as
    PEFT's ``r``; it does not bound the rank), or ``round(fraction * in * out)`` (at least 1) with
    ``fraction``; with neither, ``fraction = 0.01``. ``mask_type="random"`` draws the entries as
    PEFT does from ``random_seed``; ``"magnitude"`` takes the ``k`` entries of largest ``|W|``
    (the paper's SHiRA-WM). The trained values start at zero, so the adapter starts as the
    identity.
    """

    r: int | None = None
    fraction: float | None = None
    mask_type: str = "random"
    random_seed: int | None = None
    targets: tuple[str, ...] = ("attn.q", "attn.v")

    def __post_init__(self) -> None:
        if self.r is not None and (isinstance(self.r, bool) or not isinstance(self.r, int)
                                   or self.r <= 0):
            raise ConfigError(f"SHiRA.r must be None or a positive integer, got {self.r!r}")
        if self.fraction is not None and (isinstance(self.fraction, bool)
                                          or not isinstance(self.fraction, (int, float))
                                          or not 0 < self.fraction <= 1):
            raise ConfigError(f"SHiRA.fraction must be None or a number in (0, 1], got {self.fraction!r}")
        if self.r is not None and self.fraction is not None:
            raise ConfigError("SHiRA takes r or fraction, not both: r sizes the mask as "
                              "r * (in + out) entries, fraction as a share of in * out")
        if self.r is None and self.fraction is None:
            object.__setattr__(self, "fraction", DEFAULT_FRACTION)
        check_choice("SHiRA", "mask_type", self.mask_type, ("random", "magnitude"))
        if self.random_seed is not None and (isinstance(self.random_seed, bool)
                                             or not isinstance(self.random_seed, int)):
            raise ConfigError(f"SHiRA.random_seed must be None or an integer, got {self.random_seed!r}")
        object.__setattr__(self, "targets", _as_targets(self.targets))

    def entries(self, n_in: int, n_out: int, host: str = "?") -> int:
        """How many entries the mask of an (out, in) weight holds."""
        total = n_in * n_out
        if self.r is not None:
            k = self.r * (n_in + n_out)
            if k > total:
                raise ConfigError(f"SHiRA.r={self.r} asks for {k} entries at {host!r}, which has only "
                                  f"{total} ({n_out} x {n_in}); use a smaller r or fraction")
            return k
        assert self.fraction is not None
        return max(1, round(self.fraction * total))


def random_indices(n_in: int, n_out: int, k: int, seed: int | None) -> torch.Tensor:
    """``k`` distinct flat indices into an (out, in) matrix, sorted, as PEFT's ``random_mask``
    draws them: the first ``k`` of ``randperm(out * in)`` from a CPU generator."""
    g = torch.Generator(device="cpu")
    if seed is not None:
        g.manual_seed(seed)
    return torch.randperm(n_in * n_out, generator=g)[:k].sort().values


def magnitude_indices(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The flat indices of the ``k`` entries of largest magnitude of ``weight``: (out, in), sorted."""
    return weight.detach().abs().flatten().topk(k).indices.sort().values.cpu()


class SHiRAModule(AdapterModule):
    """Trainable ``shira_weight``: (k,) and the buffer ``shira_indices``: (k,) int64, sorted flat
    indices into the (out, in) weight (row ``i // in``, column ``i % in``), saved with the adapter.

    The weight delta is ``S``: (out, in), zero except ``S.flatten()[shira_indices] = shira_weight``;
    for ``x``: (..., in) the delta is ``x @ S.T``: (..., out). Conv1D hosts get ``S.T``.
    """

    kind = MethodKind.WEIGHT_DELTA
    shira_indices: torch.Tensor

    def __init__(self, base: nn.Module, indices: torch.Tensor) -> None:
        super().__init__()
        n_in, n_out = features_of(base)
        w = weight_of(base)
        self.shape = (n_out, n_in)
        self.register_buffer("shira_indices", indices.to(device=w.device, dtype=torch.long))
        self.shira_weight = nn.Parameter(torch.zeros(indices.numel(), device=w.device, dtype=w.dtype))

    def sparse_delta(self) -> torch.Tensor:
        """``S``: (out, in), dense, built by scattering the values into zeros."""
        v = self.shira_weight
        flat = torch.zeros(self.shape[0] * self.shape[1], device=v.device, dtype=v.dtype)
        return flat.scatter(0, self.shira_indices, v).view(self.shape)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        s = self.sparse_delta()
        return F.linear(x.to(s.dtype), s).to(h.dtype)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        s = self.sparse_delta()
        return s.t() if is_conv1d(base) else s  # Conv1D stores (in, out)

    @torch.no_grad()
    def scatter_into(self, base: nn.Module, alpha: float = 1.0) -> None:
        """``W[mask] += alpha * shira_weight`` in place: only the ``k`` masked entries are touched
        (the fast switch between adapters on merged weights; ``kit.merge`` adds the dense delta)."""
        w, (n_out, n_in) = weight_of(base), self.shape
        idx = self.shira_indices
        if is_conv1d(base):  # (in, out) storage: entry (row, col) sits at col * out + row
            idx = (idx % n_in) * n_out + torch.div(idx, n_in, rounding_mode="floor")
        values = self.shira_weight.to(w.dtype)
        if w.is_contiguous():
            w.view(-1).index_add_(0, idx, values, alpha=alpha)
        else:  # reshape copies: write the result back
            w.copy_(w.reshape(-1).index_add(0, idx, values, alpha=alpha).view(w.shape))


def _find_sites(config: SHiRA, finder: SiteFinder) -> list[Site]:
    return finder.linear_sites(config.targets, "SHiRA")


def _build(config: SHiRA, site: Site, finder: SiteFinder) -> SHiRAModule:
    base = finder.module(site.host)
    n_in, n_out = features_of(base)
    k = config.entries(n_in, n_out, site.host)
    if config.mask_type == "magnitude":
        indices = magnitude_indices(dense_weight(base), k)
    else:
        indices = random_indices(n_in, n_out, k, config.random_seed)
    return SHiRAModule(base, indices)


register(MethodSpec(
    name="shira", config_cls=SHiRA, kind=MethodKind.WEIGHT_DELTA, mergeable=True,
    find_sites=_find_sites, build=_build, paper="Bhardwaj et al. 2024, arXiv:2406.13175",
    sites_used="Linear, Conv1D (targets)",
))
