"""Invertible adapters: an invertible coupling block on the word embeddings, and its inverse in
front of an output head that shares the embedding matrix.

- Pfeiffer et al., 2020, "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual
  Transfer" (arXiv:2005.00052): the invertible adapter and its inverse at the tied LM head.
- Dinh et al., 2015, "NICE: Non-linear Independent Components Estimation" (arXiv:1410.8516):
  the additive coupling (``coupling="nice"``, the form MAD-X uses).
- Kingma and Dhariwal, 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions"
  (arXiv:1807.03039): the affine coupling (``coupling="glow"``), with the soft clamp of
  AdapterHub's ``GLOWCouplingBlock``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, dense_weight, is_linear_like
from ..core.typed import factory, weight_of
from ..errors import ConfigError, TargetError
from . import register
from .bottleneck import ACTIVATIONS


@dataclass(frozen=True)
class InvertibleAdapter:
    """Config of an invertible adapter ``o = f(e)`` on the output ``e`` of the word embedding
    (the layout's ``embed`` role), with ``f^-1`` applied to the input of every Linear output head
    whose weight *is* the embedding matrix (GPT-2's ``lm_head``, BERT's MLM ``decoder``, Whisper's
    ``proj_out``, llama with ``tie_word_embeddings``). Models without such a head (classifiers,
    untied LM heads) get ``f`` only; ``inverse=False`` never adds ``f^-1``. In BERT's MLM head
    ``f^-1`` thus reads the output of the head's transform (dense, GELU, LayerNorm), right before
    the tied decoder (AdapterHub applies it before the transform). Inputs given as
    ``inputs_embeds`` skip the embedding module, and so ``f``.

    ``f`` splits ``e`` into halves ``e1`` (the first ``d // 2`` features) and ``e2``; each coupling
    subnet is ``Linear(n, max(1, n // reduction)) -> non_linearity -> Linear(.., out)`` on an
    input half of ``n`` features. ``clamp`` bounds Glow's log-scales softly to ``(-clamp, clamp)``.
    """

    coupling: str = "nice"
    reduction: float = 2
    non_linearity: str = "relu"
    inverse: bool = True
    clamp: float = 5.0

    def __post_init__(self) -> None:
        check_choice("InvertibleAdapter", "coupling", self.coupling, ("nice", "glow"))
        check_positive("InvertibleAdapter", "reduction", self.reduction)
        check_choice("InvertibleAdapter", "non_linearity", self.non_linearity, tuple(ACTIVATIONS))
        if not isinstance(self.inverse, bool):
            raise ConfigError(f"InvertibleAdapter.inverse must be True or False, got {self.inverse!r}")
        check_positive("InvertibleAdapter", "clamp", self.clamp)


def _subnet(n_in: int, n_out: int, config: InvertibleAdapter, like: torch.Tensor) -> nn.Sequential:
    """``Linear(n_in, width) -> act -> Linear(width, n_out)``, the last layer zero: output 0."""
    kw = factory(like)
    width = max(1, int(n_in // config.reduction))
    net = nn.Sequential(nn.Linear(n_in, width, **kw), ACTIVATIONS[config.non_linearity](),
                        nn.Linear(width, n_out, **kw))
    last = cast(nn.Linear, net[2])
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net


class InvertibleModule(AdapterModule):
    """The coupling block ``f`` at the word embedding; ``e``: (..., d), ``d1 = d // 2``,
    ``d2 = d - d1``, ``e = [e1, e2]``.

    NICE (``F``: d2 -> d1, ``G``: d1 -> d2)::

        o1 = e1 + F(e2)                 e2 = o2 - G(o1)
        o2 = e2 + G(o1)                 e1 = o1 - F(e2)         (inverse)

    Glow (``F``: d2 -> 2 d1 giving ``(s1, t1)``, ``G``: d1 -> 2 d2 giving ``(s2, t2)``, and
    ``c(s) = exp(clamp * 2/pi * atan(s / clamp))``)::

        o1 = c(s1(e2)) * e1 + t1(e2)    e2 = (o2 - t2(o1)) / c(s2(o1))
        o2 = c(s2(o1)) * e2 + t2(o1)    e1 = (o1 - t1(e2)) / c(s1(e2))   (inverse)

    The last layers of ``F`` and ``G`` start at zero, so ``f`` starts as the identity. At its
    host the delta is ``f(e) - e``; ``apply_delta`` returns ``f(e)`` itself.
    """

    kind = MethodKind.RESIDUAL

    def __init__(self, dim: int, config: InvertibleAdapter, like: torch.Tensor) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"InvertibleAdapter needs embeddings of at least 2 features, got {dim}")
        self.d1, self.d2 = dim // 2, dim - dim // 2
        self.glow = config.coupling == "glow"
        self.clamp = float(config.clamp)
        k = 2 if self.glow else 1
        self.F = _subnet(self.d2, k * self.d1, config, like)
        self.G = _subnet(self.d1, k * self.d2, config, like)

    def _scale(self, s: torch.Tensor) -> torch.Tensor:
        """Glow's soft-clamped scale ``exp(clamp * 2/pi * atan(s / clamp))``, never 0."""
        return torch.exp(self.clamp * (2 / math.pi) * torch.atan(s / self.clamp))

    def _couple(self, net: nn.Module, cond: torch.Tensor, u: torch.Tensor,
                reverse: bool) -> torch.Tensor:
        """One coupling step on the half ``u`` conditioned on the other half ``cond``."""
        r = net(cond)
        if not self.glow:
            return u - r if reverse else u + r
        s, t = r.chunk(2, dim=-1)  # (..., 2n) -> log-scale (..., n), shift (..., n)
        return (u - t) / self._scale(s) if reverse else self._scale(s) * u + t

    def forward_block(self, e: torch.Tensor) -> torch.Tensor:
        """``f(e)``: (..., d) -> (..., d)."""
        e = e.to(weight_of(self.F[0]).dtype)
        e1, e2 = e.split((self.d1, self.d2), dim=-1)
        o1 = self._couple(self.F, e2, e1, reverse=False)
        o2 = self._couple(self.G, o1, e2, reverse=False)
        return torch.cat((o1, o2), dim=-1)

    def inverse(self, o: torch.Tensor) -> torch.Tensor:
        """``f^-1(o)``: (..., d) -> (..., d)."""
        o = o.to(weight_of(self.F[0]).dtype)
        o1, o2 = o.split((self.d1, self.d2), dim=-1)
        e2 = self._couple(self.G, o1, o2, reverse=True)
        e1 = self._couple(self.F, e2, o1, reverse=True)
        return torch.cat((e1, e2), dim=-1)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return (self.forward_block(h) - h).to(h.dtype)

    def apply_delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return self.forward_block(h).to(h.dtype)


class InverseModule(AdapterModule):
    """``f^-1`` in front of a tied Linear head with weight ``W``: (vocab, d) and bias ``b``.

    The head's input ``x``: (..., d) is replaced by ``f^-1(x)``, so the logits become
    ``W f^-1(x) + b``, given as the delta ``W (f^-1(x) - x)``: (..., vocab). The block is a plain
    reference to the adapter's :class:`InvertibleModule` (not a submodule): its parameters are
    that module's, yielded, counted and saved once, at the embedding.
    """

    kind = MethodKind.RESIDUAL
    block: InvertibleModule

    def __init__(self, block: InvertibleModule) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        w = dense_weight(base)
        u = self.block.inverse(x) - x.to(w.dtype)
        return F.linear(u.to(w.dtype), w).to(h.dtype)


def _embedding(finder: SiteFinder) -> str:
    """The word embedding: the one ``nn.Embedding`` among the layout's ``embed`` modules."""
    if finder.layout is None:
        raise TargetError("InvertibleAdapter needs a layout with an 'embed' role; this model has "
                          "none (pass layout= to AdapterKit)")
    paths = [p for p in finder.paths(("embed",)) if isinstance(finder.module(p), nn.Embedding)]
    if len(paths) != 1:
        raise TargetError(
            f"InvertibleAdapter needs exactly one word embedding (nn.Embedding) under the "
            f"{finder.layout.family!r} layout's 'embed' role; found {paths or 'none'}")
    return paths[0]


def tied_heads(finder: SiteFinder, embedding: str) -> list[str]:
    """Linear-like modules other than ``embedding`` whose weight is the embedding's weight."""
    weight = finder.module(embedding).weight
    return [p for p, m in finder.modules.items()
            if p != embedding and is_linear_like(m) and m._parameters.get("weight") is weight]


def _find_sites(config: InvertibleAdapter, finder: SiteFinder) -> list[Site]:
    embedding = _embedding(finder)
    sites = [Site(host=embedding, role="embed")]
    if config.inverse:
        sites += [Site(host=p, role="inverse") for p in tied_heads(finder, embedding)]
    return sites


def _block(config: InvertibleAdapter, finder: SiteFinder) -> InvertibleModule:
    """The adapter's one coupling block, built on first use and shared by its sites."""
    def build() -> InvertibleModule:
        emb = finder.module(_embedding(finder))
        assert isinstance(emb, nn.Embedding)  # _embedding finds an nn.Embedding
        return InvertibleModule(emb.embedding_dim, config, emb.weight)
    return finder.memoized(("invertible.block", config), build)


def _build(config: InvertibleAdapter, site: Site, finder: SiteFinder) -> AdapterModule:
    block = _block(config, finder)
    return InverseModule(block) if site.role == "inverse" else block


register(MethodSpec(
    name="invertible", config_cls=InvertibleAdapter, kind=MethodKind.RESIDUAL, mergeable=False,
    find_sites=_find_sites, build=_build, routable=True,
    paper="Pfeiffer et al. 2020, arXiv:2005.00052; Dinh et al. 2015, arXiv:1410.8516",
    sites_used="word embedding (embed role); inverse at output heads tied to it",
))
