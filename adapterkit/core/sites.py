"""Finding where adapters attach: layout roles and regular expressions over module paths."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

import torch
from torch import nn

from ..errors import TargetError, closest
from . import hosts
from .base import AdapterModule, Site
from .layouts import LAYER_ROLES, ROLES, Layout, looks_like_role
from .typed import weight_of

_REGEX_CHARS = set("*+?[](){}|^$\\")
_HEAD_NAMES = ("lm_head", "classifier", "score", "head", "qa_outputs", "proj_out")

T = TypeVar("T")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 style Conv1D (weight stored as in x out), recognised structurally."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def base_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` by path, leaving out adapterkit's own modules."""
    out: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if isinstance(module, AdapterModule) or ".adapterkit" in f".{path}":
            continue
        out[path] = module
    return out


def model_type_of(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None)


class SiteFinder:
    """Resolves targets (roles or regular expressions) to module paths of one model."""

    def __init__(self, model: nn.Module, layout: Layout | None) -> None:
        self.model = model
        self.layout = layout
        self.modules = base_modules(model)
        #: scratch space a method may use to share work between ``find_sites`` and the
        #: ``build`` calls of one plan (VeRA's shared projections); keys start with the method
        self.memo: dict[object, object] = {}

    def memoized(self, key: object, build: Callable[[], T]) -> T:
        """The value of ``key`` in :attr:`memo`: ``build()`` on first use in this plan, the same
        value after (``key`` starts with the method's name and holds what the value depends on)."""
        if key not in self.memo:
            self.memo[key] = build()
        return cast(T, self.memo[key])

    def module(self, path: str) -> nn.Module:
        return self.modules[path]

    def _role_paths(self, role: str) -> list[str]:
        layout = self.layout
        if layout is None:
            if role in ("all-linear", "all_linear"):
                return [p for p, m in self.modules.items()
                        if p and is_linear_like(m) and p.rsplit(".", 1)[-1] not in _HEAD_NAMES]
            raise TargetError(
                f"target {role!r} is a layout role, but this model "
                f"(model_type={model_type_of(self.model)!r}) has no layout; "
                "use regular expressions over module paths, or pass layout= to AdapterKit"
            )
        if role in ("all-linear", "all_linear"):
            return [p for p, m in self.modules.items()
                    if layout.layer_of(p) is not None and is_linear_like(m)]
        pattern = layout.role_re(role)
        if pattern is None:
            known = [r for r in ROLES if r in ("embed", "all-linear") or r in layout.roles]
            raise TargetError(
                f"unknown role {role!r} for layout {layout.family!r}; roles here: {known}"
                + (f" (all roles: {list(ROLES)})" if role not in ROLES else "")
            )
        return [p for p in self.modules if pattern.match(p)]

    def _pattern_paths(self, target: str) -> list[str]:
        if _REGEX_CHARS & set(target):
            try:
                pattern = re.compile(target)
            except re.error as exc:
                raise TargetError(f"target {target!r} is not a valid regular expression: {exc}") from None
            return [p for p in self.modules if p and pattern.fullmatch(p)]
        return [p for p in self.modules if p == target or p.endswith("." + target)]

    def paths(self, targets: Sequence[str]) -> list[str]:
        """Module paths matched by ``targets``, in model order; each target must match."""
        if isinstance(targets, str):
            targets = (targets,)
        found: set[str] = set()
        for target in targets:
            hits = self._role_paths(target) if looks_like_role(target) else self._pattern_paths(target)
            if not hits:
                raise TargetError(self._no_match_message(target))
            found.update(hits)
        return [p for p in self.modules if p in found]

    def _no_match_message(self, target: str) -> str:
        names = list(self.modules)
        near = closest(target, names + [n.rsplit(".", 1)[-1] for n in names if n])
        roles = [r for r in ROLES if self.layout is None or r in self.layout.roles
                 or r in ("embed", "all-linear")]
        return (
            f"target {target!r} matches no module of this model. "
            f"Closest module names: {near or names[:5]}. "
            f"Roles: {roles if self.layout else '(no layout for this model)'}"
        )

    def check_types(self, paths: Iterable[str], ok: Callable[[nn.Module], bool], what: str,
                    method: str) -> None:
        bad = [f"{p} ({type(self.modules[p]).__name__})" for p in paths if not ok(self.modules[p])]
        if bad:
            raise TargetError(f"{method} supports {what}; these targets are not: {bad}")

    def linear_sites(self, targets: Sequence[str], method: str) -> list[Site]:
        """One site per module ``targets`` names, each checked to be a Linear or Conv1D."""
        paths = self.paths(targets)
        self.check_types(paths, is_linear_like, "Linear and Conv1D", method)
        return [Site(host=p) for p in paths]

    def sublayer_sites(self, placement: str, with_norm: bool = False) -> list[Site]:
        """One residual site per layer and sublayer: host = the sublayer's output projection,
        input = the sublayer's first input projection (whose input is the sublayer input) and,
        with ``with_norm``, norm = the LayerNorm after the sublayer's residual (post-LN models)."""
        if self.layout is None:
            raise TargetError(
                "bottleneck placement needs a layout; this model has none "
                f"(model_type={model_type_of(self.model)!r}): pass targets= regular expressions"
            )
        parts = {"attn": [("attn.out", "attn.q")], "ffn": [("ffn.out", "ffn.in")]}
        parts["both"] = parts["attn"] + parts["ffn"]
        sites: list[Site] = []
        for out_role, in_role in parts[placement]:
            part = out_role.split(".")[0]
            outs = self._first_per_layer(out_role)
            ins = self._first_per_layer(in_role)
            has_norm = with_norm and f"{part}.norm" in self.layout.roles
            norms = self._first_per_layer(f"{part}.norm") if has_norm else {}
            if with_norm and not norms:
                raise TargetError(
                    f"layout {self.layout.family!r} has no post-residual LayerNorm ({part}.norm): "
                    "reading LN(h + x) needs a post-LN model such as bert, roberta or xlm-roberta"
                )
            for layer, host in outs.items():
                sites.append(Site(host=host, input=ins.get(layer), role=part, norm=norms.get(layer)))
        if not sites:
            raise TargetError(f"no {placement} sublayers found in layout {self.layout.family!r}")
        order = list(self.modules)
        return sorted(sites, key=lambda s: order.index(s.host))

    def output_sites(self, placement: str, targets: Sequence[str] | None, method: str) -> list[Site]:
        """Sites of an adapter that reads only its host's output: the sublayer output projections
        of ``placement``, or the modules ``targets`` names; each must be Linear or Conv1D."""
        if targets is None:
            sites = [Site(host=s.host, role=s.role) for s in self.sublayer_sites(placement)]
        else:
            sites = [Site(host=p) for p in self.paths(targets)]
        self.check_types([s.host for s in sites], is_linear_like, "Linear and Conv1D outputs", method)
        return sites

    def _first_per_layer(self, role: str) -> dict[str, str]:
        assert role in LAYER_ROLES and self.layout is not None
        first: dict[str, str] = {}
        for path in self._role_paths(role):
            layer = self.layout.layer_of(path)
            if layer is not None and layer not in first:
                first[layer] = path
        return first


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear or Conv1D as (out, in): a view, transposed for Conv1D, and
    dequantized for a quantized host (see :mod:`.hosts`)."""
    if is_conv1d(module):
        return weight_of(module).t()
    return hosts.dense_weight(module)


def features_of(module: nn.Module) -> tuple[int, int]:
    """(input features, output features) of a Linear, Conv1D, Conv2d or Embedding module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        shape = weight_of(module).shape
        return int(shape[0]), int(shape[1])
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    raise TargetError(f"cannot tell the feature sizes of a {type(module).__name__}")
