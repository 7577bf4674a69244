"""VeRA: vector-based random matrix adaptation.

Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation" (arXiv:2310.11454). The
shared projections are drawn as PEFT draws them (``peft/tuners/vera/model.py``): one pair sized
for the largest target, from a CPU generator seeded with ``projection_prng_key``, which every site
slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core import hosts
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of, is_conv1d
from ..core.typed import factory
from ..errors import ConfigError
from . import register
from .lora import _as_targets


@dataclass(frozen=True)
class VeRA:
    """Config of a VeRA adapter: ``delta(x) = b * (B (d * (A x)))``.

    ``A``: (r, in) and ``B``: (out, r) are frozen random projections shared by every site (sliced
    from one pair sized for the largest target); ``d``: (r,) starts at ``d_initial`` and ``b``:
    (out,) at zero, so the adapter starts as the identity. With ``save_projection=False`` the
    projections are not saved but redrawn from ``projection_prng_key`` on load.
    """

    r: int = 256
    targets: tuple[str, ...] = ("attn.q", "attn.v")
    d_initial: float = 0.1
    projection_prng_key: int = 0
    save_projection: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"VeRA.r must be a positive integer, got {self.r!r}")
        if not isinstance(self.projection_prng_key, int):
            raise ConfigError(
                f"VeRA.projection_prng_key must be an integer, got {self.projection_prng_key!r}")
        if isinstance(self.d_initial, bool) or not isinstance(self.d_initial, (int, float)):
            raise ConfigError(f"VeRA.d_initial must be a number, got {self.d_initial!r}")
        object.__setattr__(self, "targets", _as_targets(self.targets))


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT's ``_kaiming_init``: U(-b, b) with ``b = sqrt(3) * sqrt(2) / sqrt(fan_in)``."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def projections(r: int, n_in: int, n_out: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared ``A``: (r, n_in) and ``B``: (n_out, r), float32 on the CPU, as PEFT draws them."""
    g = torch.Generator(device="cpu").manual_seed(key)
    a = kaiming_uniform((r, n_in), g)
    return a, kaiming_uniform((n_out, r), g)


def _shared(config: VeRA, finder: SiteFinder,
            like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The projections of one plan, drawn once and shared by its sites."""
    def build() -> tuple[torch.Tensor, torch.Tensor]:
        sizes = [features_of(finder.module(p)) for p in finder.paths(config.targets)]
        n_in, n_out = max(s[0] for s in sizes), max(s[1] for s in sizes)
        a, b = projections(config.r, n_in, n_out, config.projection_prng_key)
        return a.to(like.device, like.dtype), b.to(like.device, like.dtype)
    return finder.memoized(("vera.projections", config, like.device, like.dtype), build)


class VeRAModule(AdapterModule):
    """Trainable ``lambda_d``: (r,) and ``lambda_b``: (out,); frozen buffers ``vera_A``: (r, in)
    and ``vera_B``: (out, r), views into the projections shared by the adapter's sites.

    For ``x``: (..., in) the delta is ``lambda_b * ((lambda_d * (x @ A.T)) @ B.T)``: (..., out);
    the weight delta is ``diag(lambda_b) B diag(lambda_d) A``: (out, in). Moving the model with
    ``.to()`` afterwards converts each view on its own: still correct, but no longer shared.
    """

    kind = MethodKind.WEIGHT_DELTA
    vera_A: torch.Tensor
    vera_B: torch.Tensor

    def __init__(self, base: nn.Module, shared_a: torch.Tensor, shared_b: torch.Tensor,
                 d_initial: float, save_projection: bool) -> None:
        super().__init__()
        n_in, n_out = features_of(base)
        r = shared_a.shape[0]
        # views, not copies: every site reads the same memory; saved per site if persistent
        self.register_buffer("vera_A", shared_a[:, :n_in], persistent=save_projection)  # (r, in)
        self.register_buffer("vera_B", shared_b[:n_out, :], persistent=save_projection)  # (out, r)
        kw = factory(hosts.like(base))
        self.lambda_d = nn.Parameter(torch.full((r,), float(d_initial), **kw))
        self.lambda_b = nn.Parameter(torch.zeros(n_out, **kw))

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        d, b = self.lambda_d, self.lambda_b
        x = x.to(d.dtype)
        t = d * F.linear(x, self.vera_A.to(d.dtype))  # (..., r)
        return (b * F.linear(t, self.vera_B.to(d.dtype))).to(h.dtype)  # (..., out)

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        d, b = self.lambda_d, self.lambda_b
        dw = (b[:, None] * self.vera_B.to(b.dtype)) @ (d[:, None] * self.vera_A.to(d.dtype))
        return dw.t() if is_conv1d(base) else dw  # (out, in); Conv1D stores (in, out)


def _find_sites(config: VeRA, finder: SiteFinder) -> list[Site]:
    return finder.linear_sites(config.targets, "VeRA")


def _build(config: VeRA, site: Site, finder: SiteFinder) -> VeRAModule:
    base = finder.module(site.host)
    a, b = _shared(config, finder, hosts.like(base))
    return VeRAModule(base, a, b, config.d_initial, config.save_projection)


register(MethodSpec(
    name="vera", config_cls=VeRA, kind=MethodKind.WEIGHT_DELTA, mergeable=True, routable=True,
    find_sites=_find_sites, build=_build, paper="Kopiczko et al. 2024, arXiv:2310.11454",
    sites_used="Linear, Conv1D (targets)",
))
