"""HyperAdapter: a shared hypernetwork generates every site's adapter from a task embedding and
a layer embedding (Hyperformer++).

Karimi Mahabadi et al. 2021, "Parameter-efficient Multi-task Fine-tuning for Transformers via
Shared Hypernetworks" (ACL 2021, arXiv:2106.04489). For task ``t`` and site ``i``, the source
embedding is ``I = LN(P([z_t; l_i]))`` (``P`` a two-layer ReLU MLP, ``LN`` without affine
parameters); linear generators, one per distinct (in, out) shape of the sites, map ``I`` to the
site's LoRA factors (``A``: (r, in), ``B``: (out, r)) or bottleneck weights (``down``: (m, in)
plus bias, ``up``: (out, m) plus bias). The generators of ``B`` / ``up`` start at zero, so the
adapter starts as the identity. Everything but the layer embeddings is shared: the first site's
module owns it and the others hold a plain reference (one parameter, saved once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of, is_linear_like
from ..core.tasks import TaskConditioned, per_task_lowrank
from ..core.typed import factory, weight_of
from . import register
from .lora import _as_targets
from .poly import _positive_int


@dataclass(frozen=True)
class HyperAdapter:
    """Config of a hypernetwork-generated adapter for ``n_tasks`` tasks: task and layer
    embeddings of size ``task_dim``, projector width ``hidden``. ``adapter="lora"``: LoRA of
    rank ``r`` and scale ``alpha / r`` at ``targets`` (default q and v); ``"bottleneck"``: a
    series ReLU bottleneck of width ``features // reduction`` at ``placement`` sublayers (or
    ``targets``). Per-example task ids come from ``with kit.tasks(ids):`` (not needed with one
    task)."""

    n_tasks: int = 1
    task_dim: int = 64
    hidden: int = 128
    adapter: str = "lora"
    r: int = 8
    alpha: float = 16.0
    reduction: float = 16
    placement: str = "ffn"
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for field in ("n_tasks", "task_dim", "hidden", "r"):
            _positive_int("HyperAdapter", field, getattr(self, field))
        check_choice("HyperAdapter", "adapter", self.adapter, ("lora", "bottleneck"))
        check_choice("HyperAdapter", "placement", self.placement, ("ffn", "attn", "both"))
        check_positive("HyperAdapter", "alpha", self.alpha)
        check_positive("HyperAdapter", "reduction", self.reduction)
        if self.targets is not None:
            object.__setattr__(self, "targets", _as_targets(self.targets))

    @staticmethod
    def materialize(kit: Any, name: str, task: int, into: str) -> str:
        """Add the plain LoRA or Bottleneck adapter ``into`` holding the weights HyperAdapter
        ``name`` generates for ``task``: the same outputs, and it serves, merges (LoRA) and
        routes like any adapter. Returns ``into``."""
        from .hyper_ops import materialize

        return materialize(kit, name, task, into)

    @staticmethod
    def train_task(kit: Any, name: str, task: int,
                   train_also: tuple[str, ...] = ()) -> list[nn.Parameter]:
        """Freeze everything except the embedding of ``task`` (and ``train_also``); activate
        ``name``; return them: a new task learns only its embedding."""
        from .hyper_ops import train_task

        return train_task(kit, name, task, train_also)

    @staticmethod
    def add_tasks(kit: Any, name: str, n: int = 1) -> list[int]:
        """Give HyperAdapter ``name`` ``n`` new task embeddings; returns their ids."""
        from .hyper_ops import add_tasks

        return add_tasks(kit, name, n)


class HyperNet(nn.Module):
    """The shared part: task embeddings (a ParameterList of (d,) vectors, so that one task
    trains alone), the projector and one generator per site shape."""

    def __init__(self, config: HyperAdapter, like: torch.Tensor) -> None:
        super().__init__()
        kw = factory(like)
        d = config.task_dim
        self.like = kw
        self.task_embeddings = nn.ParameterList([self.new_task(d) for _ in range(config.n_tasks)])
        self.projector = nn.Sequential(nn.Linear(2 * d, config.hidden, **kw), nn.ReLU(),
                                       nn.Linear(config.hidden, d, **kw))
        self.generators = nn.ModuleDict()

    def new_task(self, d: int) -> nn.Parameter:
        return nn.Parameter(torch.randn(d, **self.like))

    def generator(self, config: HyperAdapter, n_in: int, n_out: int) -> nn.ModuleDict:
        """The generator for sites of this shape: ``first`` makes A (or down + bias), ``second``
        B (or up + bias, zero at start)."""
        key = f"{n_in}x{n_out}"
        if key not in self.generators:
            d, kw = config.task_dim, self.like
            if config.adapter == "lora":
                sizes = (config.r * n_in, n_out * config.r)
            else:
                m = _width(config, n_in)
                sizes = (m * (n_in + 1), n_out * (m + 1))
            gen = nn.ModuleDict({"first": nn.Linear(d, sizes[0], **kw),
                                 "second": nn.Linear(d, sizes[1], **kw)})
            first, second = cast(nn.Linear, gen["first"]), cast(nn.Linear, gen["second"])
            with torch.no_grad():  # generated A / down start near Kaiming-uniform's variance
                nn.init.normal_(first.weight, std=(3.0 * n_in * d) ** -0.5)
                for t in (first.bias, second.weight, second.bias):
                    nn.init.zeros_(t)
            self.generators[key] = gen
        return cast(nn.ModuleDict, self.generators[key])


def _width(config: HyperAdapter, n_in: int) -> int:
    return max(1, int(n_in // config.reduction))


class HyperModule(TaskConditioned, AdapterModule):
    """One site: its ``layer_embedding`` (d,), and the shared :class:`HyperNet` (owned as the
    submodule ``hyper`` by the first site, a plain reference ``hyper_owner`` elsewhere)."""

    kind = MethodKind.WEIGHT_DELTA
    hyper_owner: HyperModule | None

    def __init__(self, host: nn.Module, config: HyperAdapter, owner: HyperModule | None) -> None:
        super().__init__()
        like = weight_of(host)
        self.n_in, self.n_out = features_of(host)
        if config.adapter == "bottleneck":
            self.n_in = self.n_out  # series: the adapter reads the host output
        self.lora = config.adapter == "lora"
        self.scale = config.alpha / config.r
        self.r, self.width = config.r, _width(config, self.n_in)
        self.n_tasks = config.n_tasks
        if owner is None:
            self.hyper = HyperNet(config, like)
        object.__setattr__(self, "hyper_owner", owner)
        self.layer_embedding = nn.Parameter(torch.randn(config.task_dim, **factory(like)))
        self.net.generator(config, self.n_in, self.n_out)

    @property
    def net(self) -> HyperNet:
        owner = self.hyper_owner
        return cast(HyperNet, owner.hyper if owner is not None else self.hyper)

    def generate(self, tasks: torch.Tensor) -> list[torch.Tensor]:
        """The generated weights of ``tasks`` (T,): LoRA ``[A^T (T, in, r), B^T (T, r, out)]``
        or bottleneck ``[down^T (T, in, m), down bias (T, m), up^T (T, m, out), up bias (T,
        out)]``."""
        net = self.net
        z = torch.stack(list(net.task_embeddings)).index_select(0, tasks)
        src = torch.cat([z, self.layer_embedding.expand_as(z)], -1)
        i = F.layer_norm(net.projector(src), (z.shape[-1],))
        gen = cast(nn.ModuleDict, net.generators[f"{self.n_in}x{self.n_out}"])
        first, second = gen["first"](i), gen["second"](i)
        t = tasks.shape[0]
        if self.lora:
            return [first.view(t, self.r, self.n_in).transpose(1, 2),
                    second.view(t, self.n_out, self.r).transpose(1, 2)]
        m = self.width
        down, up = first.view(t, m, self.n_in + 1), second.view(t, self.n_out, m + 1)
        return [down[..., :-1].transpose(1, 2), down[..., -1], up[..., :-1].transpose(1, 2),
                up[..., -1]]

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        u = x if self.lora else h
        rows = self.task_rows(u.shape[0], u.device)
        weights = self.generate(torch.arange(self.n_tasks, device=u.device))
        if self.lora:
            return (per_task_lowrank(u, weights[0], weights[1], rows) * self.scale).to(h.dtype)
        wd, bd, wu, bu = weights
        n = rows.shape[0]
        u3 = u.to(wd.dtype).reshape(n, -1, u.shape[-1])
        z = torch.relu(torch.baddbmm(bd[rows].unsqueeze(1), u3, wd[rows]))
        out = torch.baddbmm(bu[rows].unsqueeze(1), z, wu[rows])
        return out.reshape(*h.shape[:-1], out.shape[-1]).to(h.dtype)


def _find_sites(config: HyperAdapter, finder: SiteFinder) -> list[Site]:
    if config.adapter == "bottleneck":
        sites = finder.output_sites(config.placement, config.targets, "HyperAdapter")
    else:
        sites = [Site(host=p) for p in finder.paths(config.targets or ("attn.q", "attn.v"))]
    finder.check_types([s.host for s in sites], is_linear_like, "Linear and Conv1D", "HyperAdapter")
    return sites


def _build(config: HyperAdapter, site: Site, finder: SiteFinder) -> HyperModule:
    key = ("hyper.owner", config)
    owner = cast("HyperModule | None", finder.memo.get(key))
    module = HyperModule(finder.module(site.host), config, owner)
    if owner is None:
        finder.memo[key] = module
    return module


def _specialize(config: HyperAdapter) -> MethodSpec:
    from dataclasses import replace

    return replace(SPEC, kind=MethodKind.WEIGHT_DELTA if config.adapter == "lora"
                   else MethodKind.RESIDUAL, specialize=None)


SPEC = register(MethodSpec(
    name="hyper", config_cls=HyperAdapter, kind=MethodKind.WEIGHT_DELTA, mergeable=False,
    find_sites=_find_sites, build=_build, specialize=_specialize,
    paper="Karimi Mahabadi et al. 2021, arXiv:2106.04489 (Hyperformer)",
    sites_used="Linear, Conv1D (LoRA targets) or sublayer outputs (bottleneck); per-example "
               "task ids from kit.tasks",
    merge_note="generated per task (materialise one task with HyperAdapter.materialize)",
))
