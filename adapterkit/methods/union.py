"""Method unions: several methods in one adapter, added, trained, saved and loaded as one.

Presets:

- :func:`MAM`: He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer
  Learning" (arXiv:2110.04366): prefix tuning plus a scaled parallel adapter at the FFN.
- :func:`UniPELT`: Mao et al., 2022, "UniPELT: A Unified Framework for Parameter-Efficient
  Language Model Tuning" (arXiv:2110.07577): LoRA, prefix tuning and a bottleneck adapter, each
  scaled by a learned gate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple, cast

from ..core.base import AdapterModule, MethodKind, MethodSpec, Site
from ..core.sites import SiteFinder, features_of, is_linear_like
from ..core.typed import weight_of
from ..errors import ConfigError, TargetError
from . import register, spec_of
from .bottleneck import Bottleneck
from .inputs import InputAdapterModule
from .lora import LoRA
from .prefix import PrefixTuning, kv_shape
from .union_modules import GatedModule, GatedPrefix, PrefixGate, UnionModule

INPUT_KINDS = (MethodKind.PROMPT, MethodKind.PREFIX)


@dataclass(frozen=True)
class MethodUnion:
    """Config of an adapter made of several methods (``members``: two or more method configs,
    each listed once; at most one prompt or prefix member; no fusion layers or nested unions).

    Every member finds its sites and builds its modules as it would alone. Where members share a
    host, their modules sit in one :class:`~.union_modules.UnionModule` and their deltas add:
    ``h' = h + sum_i delta_i(h, x)``, each member reading the host's own output ``h`` and input
    ``x`` (members at one host must read the same input). At different hosts the union is the
    Stack of its members. ``gated=True`` adds UniPELT's gates (see :func:`UniPELT`) to every
    member: ``delta_i`` becomes ``sigmoid(W_g u + b_g) * delta_i`` with ``u`` the member's input,
    and a prefix member's keys and values are scaled per layer. The union merges only when it is
    not gated and every member merges; it runs as a name, in Stack, Average, Fuse, Split,
    BatchSplit and Parallel blocks (as a name or in a Stack of names when it has a prompt or
    prefix member), but not under per-example Route.
    """

    members: tuple[Any, ...]
    gated: bool = False

    def __post_init__(self) -> None:
        members = tuple(self.members) if isinstance(self.members, list) else self.members
        if not isinstance(members, tuple) or len(members) < 2:
            raise ConfigError("MethodUnion.members must be a tuple of two or more method configs, "
                              f"got {self.members!r}")
        object.__setattr__(self, "members", members)
        if not isinstance(self.gated, bool):
            raise ConfigError(f"MethodUnion.gated must be a bool, got {self.gated!r}")
        specs = [_member_spec(m) for m in members]
        inputs = [s.name for s in specs if s.kind in INPUT_KINDS]
        if len(inputs) > 1:
            raise ConfigError(f"a MethodUnion takes at most one prompt or prefix member, got {inputs}")
        if self.gated and any(s.kind is MethodKind.PROMPT for s in specs):
            raise ConfigError("a gated MethodUnion gates weight-delta, residual and prefix members; "
                              "prompt tuning has no gate (use gated=False)")
        repeated = [m for i, m in enumerate(members) if m in members[:i]]
        if repeated:
            raise ConfigError(f"MethodUnion lists {repeated[0]!r} more than once")


def _member_spec(member: Any) -> MethodSpec:
    if isinstance(member, MethodUnion):
        raise ConfigError("MethodUnion members cannot be unions: list the inner union's members")
    try:
        spec = spec_of(member)
    except ConfigError:
        raise ConfigError("MethodUnion.members must be method configs such as LoRA(...) or "
                          f"Bottleneck(...); got {member!r}") from None
    if spec.kind in (MethodKind.FUSION, MethodKind.ROUTER):
        raise ConfigError(f"a {spec.name} layer runs only inside its composition block (Fuse or "
                          "Mixture): it cannot be a union member")
    return spec


class _Part(NamedTuple):
    """One module of a union at one host: member ``member``'s module for its own ``site``, or,
    with ``gate_layer`` set, the prefix gate of that layer."""

    member: int
    site: Site
    gate_layer: int | None = None


def _attention_inputs(finder: SiteFinder) -> list[str]:
    """The first attention input projection (``attn.q``) of every layer, in layer order."""
    layout = finder.layout
    assert layout is not None  # the prefix member's site needs a layout family
    first: dict[str, str] = {}
    for path in finder.paths(("attn.q",)):
        layer = layout.layer_of(path)
        if layer is not None:
            first.setdefault(layer, path)
    hosts = list(first.values())
    layers = kv_shape(finder.model)[0]
    if len(hosts) != layers:
        raise TargetError(f"gated prefix: found {len(hosts)} attention layers (attn.q) but the "
                          f"key/value cache has {layers}")
    finder.check_types(hosts, is_linear_like, "Linear and Conv1D attention inputs", "the prefix gate")
    return hosts


def _plan_parts(config: MethodUnion, finder: SiteFinder) -> dict[str, list[_Part]]:
    by_host: dict[str, list[_Part]] = {}
    for i, member in enumerate(config.members):
        spec = spec_of(member)
        for site in spec.find_sites(member, finder):
            by_host.setdefault(site.host, []).append(_Part(i, site))
        if config.gated and spec.kind is MethodKind.PREFIX:
            for layer, host in enumerate(_attention_inputs(finder)):
                by_host.setdefault(host, []).append(_Part(i, Site(host=host, role="attn.q"), layer))
    order = {path: k for k, path in enumerate(finder.modules)}
    return dict(sorted(by_host.items(), key=lambda item: order[item[0]]))


def _parts(config: MethodUnion, finder: SiteFinder) -> dict[str, list[_Part]]:
    """The union's modules by host, worked out once per plan."""
    return finder.memoized(("union.parts", config), lambda: _plan_parts(config, finder))


def _label(config: MethodUnion, part: _Part) -> str:
    name = spec_of(config.members[part.member]).name
    return f"{name} gate" if part.gate_layer is not None else f"{name} (member {part.member})"


def _find_sites(config: MethodUnion, finder: SiteFinder) -> list[Site]:
    sites = []
    for host, parts in _parts(config, finder).items():
        labels = [_label(config, p) for p in parts]
        inputs = {p.site.input for p in parts}
        if len(inputs) > 1:
            raise ConfigError(
                f"MethodUnion members {labels} share the host {host!r} but read different inputs "
                f"({sorted(str(i) for i in inputs)}); add them as separate adapters and Stack them")
        level = [p for p in parts if p.gate_layer is None
                 and spec_of(config.members[p.member]).kind in INPUT_KINDS]
        if level and len(parts) > 1:
            raise ConfigError(f"MethodUnion members {labels} share the host {host!r}, where the "
                              "prompt/prefix member lives: target other modules")
        first = parts[0].site
        sites.append(Site(host=host, input=first.input, role=first.role,
                          norm=first.norm if len(parts) == 1 else None))
    return sites


def _gated_prefix(config: MethodUnion, index: int, finder: SiteFinder) -> GatedPrefix:
    """The one gated prefix module of a plan, shared by the prefix member's site and its gates."""
    def build() -> GatedPrefix:
        member = config.members[index]
        site = next(p.site for parts in _parts(config, finder).values() for p in parts
                    if p.member == index and p.gate_layer is None)
        # a prefix member's module is a prefix module, an InputAdapterModule
        inner = cast(InputAdapterModule, spec_of(member).build(member, site, finder))
        return GatedPrefix(inner, kv_shape(finder.model)[0])
    return finder.memoized(("union.prefix", config), build)


def _gate(module: AdapterModule, spec: MethodSpec, site: Site, finder: SiteFinder) -> GatedModule:
    host = finder.module(site.host)
    if not is_linear_like(host):
        raise TargetError(f"a gated MethodUnion gates members at Linear and Conv1D hosts; "
                          f"{spec.name} attaches at {site.host!r} ({type(host).__name__})")
    # a series residual adapter reads the host output, the others the host or tapped input
    reads_output = spec.kind is not MethodKind.WEIGHT_DELTA and bool(getattr(module, "series", True))
    source = host if reads_output or site.input is None else finder.module(site.input)
    features = features_of(source)[1 if reads_output else 0]
    return GatedModule(module, features, reads_output, weight_of(host))


def _build_part(config: MethodUnion, part: _Part, finder: SiteFinder) -> AdapterModule:
    member = config.members[part.member]
    spec = spec_of(member)
    if config.gated and spec.kind is MethodKind.PREFIX:
        prefix = _gated_prefix(config, part.member, finder)
        if part.gate_layer is None:
            return prefix
        host = finder.module(part.site.host)
        gate = PrefixGate(features_of(host)[0], part.gate_layer, weight_of(host))
        object.__setattr__(gate, "source", prefix)
        return gate
    module = spec.build(member, part.site, finder)
    if not config.gated or spec.kind in INPUT_KINDS:
        return module
    return _gate(module, spec, part.site, finder)


def _build(config: MethodUnion, site: Site, finder: SiteFinder) -> AdapterModule:
    modules = [_build_part(config, part, finder) for part in _parts(config, finder)[site.host]]
    return modules[0] if len(modules) == 1 else UnionModule(modules)


def _specialize(config: MethodUnion) -> MethodSpec:
    """The spec of one union: its kind, mergeability and generate support follow its members."""
    specs = [spec_of(m) for m in config.members]
    delta = all(s.kind is MethodKind.WEIGHT_DELTA for s in specs) and not config.gated
    mergeable = all(s.mergeable for s in specs) and not config.gated
    if config.gated:
        note = "a gated union (the gates scale each member's delta by its input: no weight delta)"
    else:
        note = (f"a union of {[s.name for s in specs]}, not all of which can be merged (a union "
                "merges only when every member does)")
    return replace(SPEC, kind=MethodKind.WEIGHT_DELTA if delta else MethodKind.RESIDUAL,
                   mergeable=mergeable, generate=all(s.generate for s in specs), specialize=None,
                   merge_note="" if mergeable else note)


SPEC = register(MethodSpec(
    name="union", config_cls=MethodUnion, kind=MethodKind.RESIDUAL, mergeable=False,
    find_sites=_find_sites, build=_build, specialize=_specialize,
    paper="He et al. 2022, arXiv:2110.04366 (MAM); Mao et al. 2022, arXiv:2110.07577 (UniPELT)",
    sites_used="its members' sites (members at one host add their deltas); mergeable when every "
               "member is and gated=False; not routable",
))


def MAM(num_tokens: int = 30, reduction: float = 2, scaling: float = 4.0,
        reparameterize: bool = False, hidden: int = 512) -> MethodUnion:
    """He et al.'s MAM adapter: prefix tuning with ``num_tokens`` key/value positions at every
    self-attention layer (their 30) plus a parallel bottleneck at every FFN, ``delta = scaling *
    up(relu(down(x)))`` from the FFN input ``x`` added to its output (their scale 4). The
    bottleneck width is ``d_model // reduction``: the default 2 gives the paper's 512 on their
    d_model = 1024 models (384 on 768). ``reparameterize``/``hidden``: the prefix's MLP (see
    :class:`~adapterkit.PrefixTuning`; ``kit.fold`` does not apply to unions)."""
    return MethodUnion((
        PrefixTuning(num_tokens=num_tokens, reparameterize=reparameterize, hidden=hidden),
        Bottleneck(reduction=reduction, placement="ffn", mode="parallel", scaling=scaling),
    ))


def UniPELT(r: int = 8, alpha: float = 16, targets: tuple[str, ...] = ("attn.q", "attn.v"),
            num_tokens: int = 10, reduction: float = 16, gated: bool = True) -> MethodUnion:
    """Mao et al.'s UniPELT: LoRA (rank ``r``, scale ``alpha / r``, on ``targets``), prefix tuning
    (``num_tokens`` positions) and a series bottleneck after every FFN (width ``d_model //
    reduction``: 48 on BERT-base, as the paper's), their defaults. With ``gated`` every submodule
    has its own gate ``g = sigmoid(W_g u + b_g)``, ``W_g``: (1, d), trained with the adapter:

    - LoRA at each target: ``delta = g * s * B A x``, ``u = x`` the attention input;
    - the adapter after each FFN: ``delta = g * adapter(h)``, ``u = h`` the FFN output;
    - prefix tuning, per layer: ``P'_K = g P_K``, ``P'_V = g P_V``, ``u`` the attention input.

    Differences from the reference implementation, which averages each gate over the sequence
    per example and replaces LoRA's ``alpha / r`` by the gate: here the LoRA and adapter gates are
    per position (the paper's ``sigmoid(W_g x)``), and LoRA keeps its scale. The gated prefixes
    sit in the key/value cache (attention forwards are not rewritten), filled once per sequence,
    so the prefix gate must not change while tokens are generated: it reads the attention input
    at the first position instead of the average over positions. It is computed by a hook at
    each layer's query projection, which runs before attention reads the cache.
    """
    return MethodUnion((
        LoRA(r=r, alpha=alpha, targets=targets),
        PrefixTuning(num_tokens=num_tokens),
        Bottleneck(reduction=reduction, placement="ffn", mode="series"),
    ), gated=gated)
