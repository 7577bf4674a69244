"""PiSSA: LoRA initialised from the principal singular values and vectors of the base weight.

Meng et al., 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large
Language Models" (arXiv:2404.02948). Chosen with ``LoRA(init="pissa")``; as PEFT's
``init_lora_weights="pissa"`` (``peft/tuners/lora/layer.py``), with ``init="pissa_niter_<k>"``
the factors come from a randomised SVD (``torch.svd_lowrank`` with ``k`` subspace iterations),
drawn here from a fixed seed so that planning the same adapter twice gives the same factors.

The base weight holds the residual while the adapter is attached, active or not: with another
adapter active, or none (``activate(None)``), the model runs on the residual base, as PEFT's
``disable_adapter`` does; ``kit.remove`` gives the original weights back. A saved PiSSA adapter
is loaded onto the *original* base weights (loading recomputes the residual from them).
:func:`save_pissa_as_lora` writes instead a plain LoRA of rank ``2r`` that applies to the original
base without any residual, as PEFT's ``path_initial_model_for_weight_conversion`` does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.merging import tied_hosts
from ..core.sites import SiteFinder, dense_weight, features_of, is_conv1d, is_linear_like
from ..core.typed import weight_of
from ..errors import ConfigError
from . import spec_of
from .lora import LoRA, LoRAModule, is_pissa

if TYPE_CHECKING:
    from ..core.records import AdapterRecord
    from ..kit import AdapterKit

_NITER_SEED = 0


def check_pissa_sites(config: LoRA, finder: SiteFinder, paths: list[str]) -> None:
    """PiSSA rewrites its hosts' weights: Linear or Conv1D only, untied, and ``r <= min(in, out)``."""
    bad = [f"{p} ({type(finder.module(p)).__name__})" for p in paths
           if not is_linear_like(finder.module(p))]
    if bad:
        raise ConfigError(f"LoRA init={config.init!r} supports Linear and Conv1D hosts only; these "
                          f"targets are not: {bad}")
    tied = tied_hosts(finder.model, paths)
    if tied:
        raise ConfigError(f"LoRA init={config.init!r} rewrites its hosts' weights, but these are "
                          f"tied to other modules, which would change too: {tied}")
    small = [f"{p} (rank {config.rank_for(p)} > {min(features_of(finder.module(p)))})"
             for p in paths if config.rank_for(p) > min(features_of(finder.module(p)))]
    if small:
        raise ConfigError(f"LoRA init={config.init!r} needs a rank of at most min(in, out): {small}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def principal_factors(weight: torch.Tensor, r: int, scale: float,
                      init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = sqrt(S_r / s) Vh_r``: (r, in) and ``B = U_r sqrt(S_r / s)``: (out, r) from the SVD
    ``U S Vh`` of ``weight``: (out, in), so that ``s B A`` is its best rank-r approximation;
    float32 (float64 stays float64)."""
    w = weight.detach().to(_compute_dtype(weight.dtype))
    if init == "pissa":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # u (out, m), s (m,), vh (m, in)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        niter = int(init.rsplit("_", 1)[1])
        devices: list[int] | None = None if w.is_cuda else []
        with torch.random.fork_rng(devices=devices, device_type="cuda" if w.is_cuda else None):
            torch.manual_seed(_NITER_SEED)
            u, s, v = torch.svd_lowrank(w, q=r, niter=niter)  # u (out, r), v (in, r)
        vh = v.t()
    root = torch.sqrt(s / scale)  # (r,)
    return root[:, None] * vh, u * root[None, :]


class PiSSAModule(LoRAModule):
    """A LoRA module on a Linear or Conv1D whose factors start as the principal part of its
    host's weight ``W``: (out, in) (Conv1D stores it as (in, out)).

    ``lora_A``: (r, in) and ``lora_B``: (out, r) start at :func:`principal_factors`; copies of
    these initial factors stay in the non-persistent buffers ``pissa_A0``, ``pissa_B0``. While the
    module is attached its host holds the residual ``W_res = W - s B0 A0``, so the output at init
    is ``W_res x + s B0 A0 x``: the base output up to float rounding (about 1e-7 relative in
    float32). The original weight is kept on the CPU meanwhile; detaching writes back
    ``W + (W_now - W_res)``: exactly ``W`` when nothing else changed the host's weight (merging
    an adapter there and unmerging it again leaves float rounding).
    """

    pissa_A0: torch.Tensor
    pissa_B0: torch.Tensor

    def __init__(self, base: nn.Module, r: int, scale: float, dropout: float, init: str) -> None:
        super().__init__(base, r, scale, dropout, "zeros")
        a0, b0 = principal_factors(dense_weight(base), r, scale, init)
        with torch.no_grad():
            self.lora_A.copy_(a0)
            self.lora_B.copy_(b0)
        self.register_buffer("pissa_A0", self.lora_A.detach().clone(), persistent=False)
        self.register_buffer("pissa_B0", self.lora_B.detach().clone(), persistent=False)
        self.original_weight: torch.Tensor | None = None

    def residual(self, weight: torch.Tensor, host: nn.Module) -> torch.Tensor:
        """``weight - s B0 A0`` in ``weight``'s layout and dtype."""
        cdt = _compute_dtype(weight.dtype)
        dense = weight.t() if is_conv1d(host) else weight  # (out, in)
        res = dense.to(cdt) - (self.scale * self.pissa_B0.to(cdt)) @ self.pissa_A0.to(cdt)
        res = res.to(weight.dtype)
        return res.t() if is_conv1d(host) else res

    def attached(self, host: nn.Module) -> None:
        w = weight_of(host)
        with torch.no_grad():
            self.original_weight = w.detach().to("cpu", copy=True)
            w.copy_(self.residual(w.detach(), host))

    def detached(self, host: nn.Module) -> None:
        if self.original_weight is None:
            return
        w = weight_of(host)
        with torch.no_grad():
            original = self.original_weight.to(w.device)
            w.copy_(original + (w.detach() - self.residual(original, host)))
        self.original_weight = None


def pissa_as_lora(kit: AdapterKit, name: str) -> AdapterRecord:
    """Adapter ``name`` (a PiSSA LoRA) as a plain LoRA for the original base weights, not
    attached: ``A' = [A; A0]``: (2r, in), ``B' = [B, -B0]``: (out, 2r), so that
    ``s B' A' = s (B A - B0 A0)``: trained delta minus the part the residual base removed. The
    config doubles ``r`` and the rank_pattern ranks, and ``alpha`` (times ``sqrt(2)`` with
    rsLoRA), which keeps every site's scale; it keeps the name, sites and trained heads."""
    from ..core.records import AdapterRecord

    record = kit.record(name)
    config = record.config
    if not isinstance(config, LoRA) or not is_pissa(config.init):
        raise ConfigError(f"adapter {name!r} is not a PiSSA adapter (a LoRA with init='pissa'); "
                          "it applies to its base weights as saved")
    new = dataclasses.replace(
        config, r=2 * config.r, init="zeros",
        alpha=config.alpha * (math.sqrt(2) if config.use_rslora else 2),
        rank_pattern=tuple((p, 2 * k) for p, k in config.rank_pattern))
    modules: dict[str, AdapterModule] = {}
    for host, module in record.modules.items():
        assert isinstance(module, PiSSAModule)
        a, b = module.lora_A.detach(), module.lora_B.detach()
        lora = LoRAModule(kit.model.get_submodule(host), 2 * a.shape[0], new.scale_for(host),
                          config.dropout, "zeros")
        with torch.no_grad():
            lora.lora_A.copy_(torch.cat([a, module.pissa_A0.to(a.dtype)], 0))  # (2r, in)
            b2 = torch.cat([b, -module.pissa_B0.to(b.dtype)], 1)  # (out, 2r)
            lora.lora_B.copy_(b2 * (module.scale / lora.scale))
        modules[host] = lora
    extra = {k: v for k, v in record.extra.items() if k != "qat"}
    return AdapterRecord(name, new, spec_of(new), list(record.sites), modules,
                         heads=record.heads, extra=extra)
