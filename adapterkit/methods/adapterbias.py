"""AdapterBias: a token-dependent shift of a sublayer's output.

Fu et al., 2022, "AdapterBias: Parameter-efficient Token-dependent Representation Shift for
Adapters in NLP Tasks" (Findings of NAACL 2022; arXiv:2205.00305). The paper adds
``alpha(r) * v`` to the output ``r`` of the second feed-forward layer of every transformer layer
(``placement="ffn"``); the linear layer ``L_alpha`` reads that same output ``r`` (in the authors'
code ``BertOutput`` adds ``adapter_bias(dense_output)`` before the residual and LayerNorm), so
here it reads the host output ``h``, as a series adapter does. The paper starts ``v`` at ones;
here ``v`` starts at zero so that the adapter starts as the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice
from ..core import hosts
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of
from ..core.typed import factory
from ..errors import ConfigError
from . import register


@dataclass(frozen=True)
class AdapterBias:
    """Config of an AdapterBias adapter ``delta = alpha(h) * v``.

    ``h``: (..., out) is the host (sublayer) output; ``alpha``: Linear(out -> 1) gives one weight
    per token, with no activation; ``v``: (out,) is one learned shift shared by the tokens.
    ``placement`` picks the sublayer outputs from the layout (``"ffn"``, ``"attn"``, ``"both"``);
    ``targets`` (regular expressions or module names) replaces it for models without a layout.
    Trainable parameters per site: ``out + (out + 1)``.
    """

    placement: str = "ffn"
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("AdapterBias", "placement", self.placement, ("ffn", "attn", "both"))
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        elif self.targets is not None:
            if not self.targets:
                raise ConfigError("AdapterBias.targets must be None or a non-empty sequence")
            object.__setattr__(self, "targets", tuple(self.targets))


class AdapterBiasModule(AdapterModule):
    """``v``: (out,), ``alpha``: Linear(in -> 1) with ``in == out`` (it reads the host output).

    For ``h``: (..., out) the delta is ``alpha(h) * v``: (..., 1) * (out,) -> (..., out). ``v``
    starts at zero (the identity at init); ``alpha`` starts as ``nn.Linear`` does.
    """

    kind = MethodKind.RESIDUAL

    def __init__(self, n_out: int, like: torch.Tensor) -> None:
        super().__init__()
        kw = factory(like)
        self.v = nn.Parameter(torch.zeros(n_out, **kw))
        self.alpha = nn.Linear(n_out, 1, **kw)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        u = h.to(self.v.dtype)
        a = F.linear(u, self.alpha.weight, self.alpha.bias)  # (..., 1): one weight per token
        return (a * self.v).to(h.dtype)


def _find_sites(config: AdapterBias, finder: SiteFinder) -> list[Site]:
    return finder.output_sites(config.placement, config.targets, "AdapterBias")


def _build(config: AdapterBias, site: Site, finder: SiteFinder) -> AdapterBiasModule:
    host = finder.module(site.host)
    return AdapterBiasModule(features_of(host)[1], hosts.like(host))


register(MethodSpec(
    name="adapterbias", config_cls=AdapterBias, kind=MethodKind.RESIDUAL, mergeable=False, routable=True,
    find_sites=_find_sites, build=_build, paper="Fu et al. 2022, arXiv:2205.00305",
    sites_used="sublayer outputs (attn.out, ffn.out) or targets",
))
