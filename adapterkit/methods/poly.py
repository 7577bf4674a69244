"""Poly and MHR: an inventory of LoRA skills per site with a learned task-to-skill routing.

Ponti et al. 2023, "Combining Parameter-efficient Modules for Task-level Generalisation"
(Polytropon, EACL 2023, arXiv:2202.13914); Caccia et al. 2023, "Multi-Head Adapter Routing for
Cross-Task Generalization" (MHR, NeurIPS 2023, arXiv:2211.03831). Layout and scaling follow
PEFT's ``poly``: per site and split ``q``, skill ``s`` holds ``A[q, s]``: (in/h, r) and
``B[q, s]``: (r, out/h); task ``t`` mixes them with ``w[t, q] = z[t, q] / sum_s z[t, q, s]``,
``z = sigmoid(logits)`` (a relaxed Bernoulli sample in training, with ``sample``); the split
mixtures are concatenated along ``in`` (A) and ``out`` (B) and ``delta = (alpha / r) x A B``.
MHR-z (:meth:`Poly.train_routing`) trains only the routing; MHR-mu (:meth:`Poly.average`)
averages the skills into one plain LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import check_positive
from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of
from ..core.tasks import TaskConditioned, per_task_lowrank
from ..core.typed import factory, weight_of
from ..errors import ConfigError
from . import register
from .lora import _as_targets, lora_supports

EPS = 1e-12  # PEFT's: keeps the normalisation finite when every sampled z is 0
ROUTING_INIT = 1e-3  # logits start uniform in (-1e-3, 1e-3), as in PEFT


def _positive_int(cls: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{cls}.{field} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Poly:
    """Config of a Poly/MHR adapter: ``n_skills`` LoRA skills of rank ``r`` per site, a routing
    of ``n_tasks`` tasks over them in ``n_splits`` heads (1: Polytropon; more: MHR), scale
    ``alpha / r`` (PEFT's Poly has 1 / r: ``alpha=1``). Linear and Conv1D ``targets``; their in
    and out features must be divisible by ``n_splits``. ``sample``: relaxed-Bernoulli routing in
    training (Polytropon), else the sigmoid as in evaluation. Per-example task ids come from
    ``with kit.tasks(ids):`` (not needed with one task)."""

    n_skills: int = 4
    n_tasks: int = 1
    n_splits: int = 1
    r: int = 8
    alpha: float = 1.0
    targets: tuple[str, ...] = ("attn.q", "attn.v")
    sample: bool = True

    def __post_init__(self) -> None:
        for field in ("n_skills", "n_tasks", "n_splits", "r"):
            _positive_int("Poly", field, getattr(self, field))
        check_positive("Poly", "alpha", self.alpha)
        object.__setattr__(self, "targets", _as_targets(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @staticmethod
    def train_routing(kit: Any, name: str, tasks: Any = None,
                      train_also: tuple[str, ...] = ()) -> list[nn.Parameter]:
        """MHR-z: freeze everything except the routing logits of ``tasks`` (ids; None: all)
        of Poly adapter ``name`` and the ``train_also`` modules; activate it; return them."""
        from .poly_ops import train_routing

        return train_routing(kit, name, tasks, train_also)

    @staticmethod
    def average(kit: Any, name: str, into: str) -> str:
        """MHR-mu: add the plain LoRA ``into`` whose A and B are Poly adapter ``name``'s skills
        averaged (per split); it computes ``(alpha / r) x mean_s(A) mean_s(B)``. Returns
        ``into``, ready to fine-tune with ``kit.train(into)``."""
        from .poly_ops import average

        return average(kit, name, into)

    @staticmethod
    def add_tasks(kit: Any, name: str, n: int = 1) -> list[int]:
        """Give Poly adapter ``name`` ``n`` new tasks (routing logits initialised as at
        creation); returns their ids. Train them with :meth:`train_routing` (MHR-z)."""
        from .poly_ops import add_tasks

        return add_tasks(kit, name, n)


class PolyModule(TaskConditioned, AdapterModule):
    """``lora_A``: (h, m, in/h, r), ``lora_B``: (h, m, r, out/h), ``routing``: one (h * m,)
    logit vector per task (a ParameterList, so that one task's routing trains alone; empty for
    one skill). ``B``
    starts at zero, so the adapter starts as the identity."""

    kind = MethodKind.WEIGHT_DELTA

    def __init__(self, base: nn.Module, config: Poly) -> None:
        super().__init__()
        n_in, n_out = features_of(base)
        h, m, r = config.n_splits, config.n_skills, config.r
        kw = factory(weight_of(base))
        self.n_tasks, self.n_splits, self.n_skills = config.n_tasks, h, m
        self.scale, self.sample = config.scale, config.sample
        self.lora_A = nn.Parameter(torch.empty(h, m, n_in // h, r, **kw))
        self.lora_B = nn.Parameter(torch.zeros(h, m, r, n_out // h, **kw))
        with torch.no_grad():
            for q in range(h):
                for s in range(m):  # each skill's A as a LoRA A: (r, in/h), Kaiming-uniform
                    a = torch.empty(r, n_in // h, **kw)
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                    self.lora_A[q, s] = a.t()
        # one skill has nothing to route: no logits (the mixing weight is 1)
        tasks = config.n_tasks if m > 1 else 0
        self.routing = nn.ParameterList([self.new_routing() for _ in range(tasks)])

    def new_routing(self) -> nn.Parameter:
        w = self.lora_A
        return nn.Parameter(torch.empty(self.n_splits * self.n_skills, device=w.device,
                                        dtype=w.dtype).uniform_(-ROUTING_INIT, ROUTING_INIT))

    def mixing(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-row skill weights (N, h, m): normalised sigmoids of the row's task logits (a
        relaxed-Bernoulli sample in training when ``sample``); ones for one skill."""
        if self.n_skills == 1:
            return self.lora_A.new_ones(rows.shape[0], self.n_splits, 1)
        logits = torch.stack(list(self.routing)).index_select(0, rows)
        logits = logits.view(-1, self.n_splits, self.n_skills)
        sampled = self.training and self.sample
        z = _relaxed(logits).rsample() if sampled else torch.sigmoid(logits)
        return z / (z.sum(-1, keepdim=True) + EPS)

    def factors(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A: (N, in, r), B: (N, r, out)) mixed with weights ``w``: (N, h, m)."""
        n = w.shape[0]
        a = torch.einsum("bqs,qsdr->bqdr", w, self.lora_A).reshape(n, -1, self.lora_A.shape[-1])
        b = torch.einsum("bqs,qsrd->bqrd", w, self.lora_B).transpose(1, 2)
        return a, b.reshape(n, b.shape[1], -1)

    def delta(self, h: torch.Tensor, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        rows = self.task_rows(x.shape[0], x.device)
        if self.training and self.sample:  # one sample per row
            a, b = self.factors(self.mixing(rows))
            idx = torch.arange(rows.shape[0], device=rows.device)
        else:  # one mixture per task, gathered per row
            tasks = torch.arange(self.n_tasks, device=rows.device)
            a, b = self.factors(self.mixing(tasks))
            idx = rows
        return (per_task_lowrank(x, a, b, idx) * self.scale).to(h.dtype)


def _relaxed(logits: torch.Tensor) -> Any:
    """Polytropon's relaxed Bernoulli over the routing logits (temperature 1)."""
    from torch.distributions import RelaxedBernoulli

    return RelaxedBernoulli(temperature=torch.tensor(1.0, device=logits.device), logits=logits)


def _find_sites(config: Poly, finder: SiteFinder) -> list[Site]:
    paths = finder.paths(config.targets)
    finder.check_types(paths, lambda m: lora_supports(m) and not isinstance(
        m, (nn.Conv2d, nn.Embedding)), "Linear and Conv1D", "Poly")
    for p in paths:
        n_in, n_out = features_of(finder.module(p))
        if n_in % config.n_splits or n_out % config.n_splits:
            raise ConfigError(f"Poly at {p!r}: in={n_in} and out={n_out} must be divisible by "
                              f"n_splits={config.n_splits}")
    return [Site(host=p) for p in paths]


def _build(config: Poly, site: Site, finder: SiteFinder) -> PolyModule:
    return PolyModule(finder.module(site.host), config)


register(MethodSpec(
    name="poly", config_cls=Poly, kind=MethodKind.WEIGHT_DELTA, mergeable=False,
    find_sites=_find_sites, build=_build,
    paper="Ponti et al. 2023, arXiv:2202.13914 (Polytropon); Caccia et al. 2023, "
          "arXiv:2211.03831 (MHR)",
    sites_used="Linear, Conv1D (targets); per-example task ids from kit.tasks",
    merge_note="a per-task mixture of skills (materialise one with Poly.average, MHR-mu)",
))
