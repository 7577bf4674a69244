"""The base-model check of a native checkpoint: its ``base.fingerprint`` against the model.

The fingerprint hashes the paths and weight shapes of the adapter's host modules. A checkpoint
that also records ``base.shapes`` (host path -> weight shape) lets a mismatch name each host
whose weight differs; older ones name the hosts the model lacks and both fingerprints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..core.sites import model_type_of

if TYPE_CHECKING:
    from ..kit import AdapterKit

SHOWN = 8


def host_shapes(kit: AdapterKit, hosts: list[str]) -> dict[str, list[int]]:
    out = {}
    for path in sorted(hosts):
        w = getattr(kit.model.get_submodule(path), "weight", None)
        out[path] = list(w.shape) if isinstance(w, torch.Tensor) else []
    return out


def _saved_hosts(base: dict[str, Any]) -> list[str]:
    hosts = []
    for site in base.get("sites") or []:
        host = site[0] if isinstance(site, (list, tuple)) and site else site
        if isinstance(host, str):
            hosts.append(host)
    return sorted(set(hosts))


def _capped(items: list[str]) -> list[str]:
    return items[:SHOWN] + ([f"... and {len(items) - SHOWN} more"] if len(items) > SHOWN else [])


def base_problems(kit: AdapterKit, meta: dict[str, Any]) -> list[str]:
    """What differs between the base model the checkpoint was saved from and ``kit.model``
    (empty when the fingerprints agree, or the checkpoint records none)."""
    from .kitio import fingerprint

    base = meta.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), str):
        return []
    hosts = _saved_hosts(base)
    modules = dict(kit.model.named_modules())
    missing = [h for h in hosts if h not in modules]
    if missing:
        return _capped([f"this model has no module {h}" for h in missing])
    now = fingerprint(kit, hosts)
    if now == base["fingerprint"]:
        return []
    shapes, saved = host_shapes(kit, hosts), base.get("shapes")
    diffs = []
    if isinstance(saved, dict):
        diffs = [f"{h}: the adapter was made for a weight of shape {tuple(saved[h])}, this model's is "
                 f"{tuple(shapes[h])}" for h in hosts if h in saved and list(saved[h]) != shapes[h]]
    was, model_type = base.get("model_type"), model_type_of(kit.model)
    summary = (f"base fingerprint {base['fingerprint']} (model_type {was!r}) differs from this "
               f"model's {now} (model_type {model_type!r}) over {len(hosts)} host module(s)")
    return [summary, *_capped(diffs)]
