"""SparseAdapter: bottleneck adapters pruned at initialisation.

He et al., 2022, "SparseAdapter: An Easy Approach for Improving the Parameter-Efficiency of
Adapters" (Findings of EMNLP 2022; arXiv:2210.04284). The two projection weights of every
bottleneck adapter are pruned once, before training, to a sparsity ``s``; the pruned entries stay
zero. The paper prunes with SNIP (Lee et al., 2019, "SNIP: Single-shot Network Pruning based on
Connection Sensitivity", arXiv:1810.02340): the score of a weight ``w`` is ``|w * dL/dw|`` on a
few batches, and the highest scores over all adapter weights together are kept (the paper's
code defaults: ``mask_scope='global'``, biases not pruned, weights drawn N(0, 0.02^2)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice
from ..core import hosts
from ..core.base import MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder
from ..errors import ConfigError
from . import register
from .bottleneck import Bottleneck, BottleneckModule, bottleneck_shape
from .bottleneck import _find_sites as _bottleneck_sites

if TYPE_CHECKING:
    from ..kit import AdapterKit

#: standard deviation of the normal draw of both projection weights (the paper's "bert" init)
INIT_STD = 0.02


@dataclass(frozen=True)
class SparseAdapter(Bottleneck):
    """Config of a SparseAdapter: a :class:`Bottleneck` adapter (same fields and placement) whose
    ``down`` and ``up`` weights keep only ``1 - sparsity`` of their entries.

    ``criterion`` picks the kept entries: ``"snip"`` by ``|w * dL/dw|`` computed by
    :func:`snip_prune` on data, ``"magnitude"`` by ``|w|`` and ``"random"`` uniformly (drawn from
    ``seed``). Magnitude and random masks need no data and are set when the adapter is added;
    a ``"snip"`` adapter starts with the magnitude mask (the data-free fallback, so it is sparse
    even if :func:`snip_prune` is never called) but keeps its pruned weights until
    :func:`snip_prune` replaces the mask. ``scope="global"`` (the paper's) ranks the entries of
    all the adapter's weights together, so each layer ends at its own sparsity; ``"layer"``
    prunes every weight matrix to ``sparsity`` on its own. Biases and the LayerNorm are dense.
    The weights start N(0, 0.02^2) and the biases at zero, so the adapter is not the identity at
    initialisation (SNIP scores of zero weights would all be zero).
    """

    sparsity: float = 0.5
    criterion: str = "snip"
    scope: str = "global"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0 < self.sparsity < 1:
            raise ConfigError(f"SparseAdapter.sparsity must be a number in (0, 1), got {self.sparsity!r}")
        check_choice("SparseAdapter", "criterion", self.criterion, ("snip", "magnitude", "random"))
        check_choice("SparseAdapter", "scope", self.scope, ("global", "layer"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"SparseAdapter.seed must be an integer, got {self.seed!r}")


class SparseAdapterModule(BottleneckModule):
    """A bottleneck (``down``: in -> m, ``up``: m -> out) with boolean buffers ``down_mask``:
    (m, in) and ``up_mask``: (out, m), saved with the adapter.

    The forward uses ``down.weight * down_mask`` and ``up.weight * up_mask``, so a pruned entry
    contributes nothing and gets a zero gradient whatever its stored value (an optimizer's weight
    decay cannot bring it back); setting a mask also zeroes the stored pruned entries.
    Input ``u``: (..., in); delta: (..., out).
    """

    down_mask: torch.Tensor
    up_mask: torch.Tensor

    def __init__(self, n_in: int, n_out: int, width: int, config: SparseAdapter,
                 like: torch.Tensor) -> None:
        super().__init__(n_in, n_out, width, config, like)
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=INIT_STD)
            nn.init.normal_(self.up.weight, std=INIT_STD)
            nn.init.zeros_(self.down.bias)
        self.register_buffer("down_mask", torch.ones(width, n_in, dtype=torch.bool, device=like.device))
        self.register_buffer("up_mask", torch.ones(n_out, width, dtype=torch.bool, device=like.device))

    def pruned(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, mask) of each prunable weight."""
        return [(self.down.weight, self.down_mask), (self.up.weight, self.up_mask)]

    @torch.no_grad()
    def set_masks(self, masks: list[torch.Tensor], zero_pruned: bool = True) -> None:
        """Install new masks (in :meth:`pruned` order); ``zero_pruned`` also zeroes the stored
        pruned weights."""
        for (w, mask), new in zip(self.pruned(), masks):
            mask.copy_(new)
            if zero_pruned:
                w.mul_(new)

    def nonzero_count(self) -> int:
        """Trainable entries that can be nonzero: kept weights, biases and LayerNorm."""
        masked = {id(w) for w, _ in self.pruned()}
        dense = sum(p.numel() for p in self.parameters() if id(p) not in masked)
        return dense + sum(int(m.sum()) for _, m in self.pruned())

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        u = h if self.series else x
        if self.orig_norm is not None:
            u = self.orig_norm(h + x)
        wd, wu = (w * m for w, m in self.pruned())
        z = self.act(F.linear(self.norm(u.to(wd.dtype)), wd, self.down.bias))  # (..., m)
        return (F.linear(z, wu, self.up.bias) * self.scaling).to(h.dtype)  # (..., out)


def top_masks(scores: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Boolean masks keeping the ``round((1 - sparsity) * n)`` (at least 1) highest scores,
    ranked over all tensors together (``scope="global"``) or in each tensor (``"layer"``)."""
    def keep(flat: torch.Tensor) -> torch.Tensor:
        k = max(1, round((1 - sparsity) * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        mask[flat.topk(k).indices] = True
        return mask

    if scope == "layer":
        return [keep(s.flatten()).view(s.shape) for s in scores]
    flat = keep(torch.cat([s.flatten().float() for s in scores]))
    return [m.view(s.shape) for m, s in zip(flat.split([s.numel() for s in scores]), scores)]


def _data_free_scores(config: SparseAdapter, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    if config.criterion == "random":
        g = torch.Generator(device="cpu").manual_seed(config.seed)
        return [torch.rand(w.shape, generator=g).to(w.device) for w in weights]
    return [w.detach().abs() for w in weights]  # magnitude, and the fallback of "snip"


def _find_sites(config: SparseAdapter, finder: SiteFinder) -> list[Site]:
    return _bottleneck_sites(config, finder)


def _make(config: SparseAdapter, site: Site, finder: SiteFinder) -> SparseAdapterModule:
    host = finder.module(site.host)
    module = SparseAdapterModule(*bottleneck_shape(config, site, finder), config, hosts.like(host))
    if site.norm is not None:
        object.__setattr__(module, "orig_norm", finder.module(site.norm))
    return module


def _build(config: SparseAdapter, site: Site, finder: SiteFinder) -> SparseAdapterModule:
    """All of the adapter's modules are built at the first site, so that a global mask can rank
    every weight; later sites take theirs from the finder's memo."""
    def build() -> dict[str, SparseAdapterModule]:
        modules = {s.host: _make(config, s, finder) for s in _find_sites(config, finder)}
        pairs = [pw for m in modules.values() for pw in m.pruned()]
        masks = top_masks(_data_free_scores(config, [w for w, _ in pairs]), config.sparsity,
                          config.scope)
        for i, m in enumerate(modules.values()):
            m.set_masks(masks[2 * i: 2 * i + 2], zero_pruned=config.criterion != "snip")
        return modules
    return finder.memoized(("sparse_adapter.modules", config), build)[site.host]


def _batch_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    if not isinstance(batch, Mapping):
        raise ConfigError("snip_prune: a batch that is not a callable must be a mapping of model "
                          f"keyword arguments (or pass loss_fn), got {type(batch).__name__}")
    return model(**batch).loss


def snip_prune(kit: AdapterKit, name: str,
               data: Callable[[], torch.Tensor] | Iterable[Any],
               loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None) -> dict[str, float]:
    """Prune SparseAdapter ``name`` with SNIP, before training; returns the density per site.

    ``data`` is a callable returning a scalar loss (one batch), or an iterable of batches: each a
    callable returning the loss, or a batch given to ``loss_fn(model, batch)`` (default:
    ``model(**batch).loss``). With every mask at one, the gradients ``g`` of the summed losses
    are taken for the adapter's weights ``w``; the entries with the highest ``|w * g|`` are kept,
    over all weights (``scope="global"``) or per weight matrix (``"layer"``), and the others are
    zeroed. The adapter is activated (as ``kit.train`` does) and the model runs in eval mode.
    """
    record = kit.record(name)
    config = record.config
    if not isinstance(config, SparseAdapter) or config.criterion != "snip":
        raise ConfigError(f"snip_prune needs a SparseAdapter with criterion='snip'; {name!r} is "
                          f"{record.spec.name} with config {config!r}")
    modules = [m for m in record.modules.values() if isinstance(m, SparseAdapterModule)]
    pairs = [pw for m in modules for pw in m.pruned()]
    weights = [w for w, _ in pairs]
    before = [[mask.clone() for _, mask in m.pruned()] for m in modules]
    for m in modules:  # the dense adapter: every connection present
        m.set_masks([torch.ones_like(mask) for _, mask in m.pruned()], zero_pruned=False)
    kit.activate(name)
    was_training = kit.model.training
    kit.model.eval()
    try:
        grads = _summed_grads(kit.model, weights, data, loss_fn or _batch_loss)
        scores = [(w.detach() * g).abs() for w, g in zip(weights, grads)]
        if not any(bool(s.any()) for s in scores):
            raise ConfigError(f"snip_prune: every SNIP score of {name!r} is zero (no gradient "
                              "reached the adapter's weights); the loss must depend on its output")
    except BaseException:  # the masks as they were
        for m, masks in zip(modules, before):
            m.set_masks(masks, zero_pruned=False)
        raise
    finally:
        kit.model.train(was_training)
    masks = top_masks(scores, config.sparsity, config.scope)
    for i, m in enumerate(modules):
        m.set_masks(masks[2 * i: 2 * i + 2])
    return {host: (m.down_mask.sum() + m.up_mask.sum()).item() / (m.down_mask.numel()
                                                                  + m.up_mask.numel())
            for host, m in record.modules.items() if isinstance(m, SparseAdapterModule)}


def _summed_grads(model: nn.Module, weights: list[torch.Tensor], data: Any,
                  loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> list[torch.Tensor]:
    """``sum over batches of dL/dw`` for each of ``weights`` (their requires_grad forced on)."""
    batches = [data] if callable(data) else list(data)
    if not batches:
        raise ConfigError("snip_prune needs at least one batch")
    flags = [w.requires_grad for w in weights]
    grads = [torch.zeros_like(w) for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            loss = batch() if callable(batch) else loss_fn(model, batch)
            step = torch.autograd.grad(loss, weights, allow_unused=True)
            for acc, g in zip(grads, step):
                if g is not None:
                    acc.add_(g)
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    return grads


register(MethodSpec(
    name="sparse_adapter", config_cls=SparseAdapter, kind=MethodKind.RESIDUAL, mergeable=False,
    find_sites=_find_sites, build=_build, paper="He et al. 2022, arXiv:2210.04284",
    sites_used="sublayer outputs (attn.out, ffn.out) or targets",
))
