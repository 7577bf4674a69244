""""Compatible with this model": a structural check of an adapter against a model's fingerprint.

A fingerprint (what :func:`adapterkit.io.hub.search.model_fingerprint` sends) is
``{"model_type": ..., "modules": {path: weight shape}}`` over the model's modules that hold a
weight. An adapter fits when every host module it needs is in ``modules`` with the weight shape
it was made for (a host recorded without a shape only has to exist). An adapter whose needs
could not be read from its files never fits. This is not a name comparison: an adapter saved
from a model of the same ``model_type`` but other widths does not fit.
"""

from __future__ import annotations

from typing import Any

from ..errors import HubError

MAX_MODULES = 200_000


def check_fingerprint(fp: Any) -> dict[str, list[int]]:
    """The ``modules`` of a fingerprint; a malformed one raises with what is expected."""
    modules = fp.get("modules") if isinstance(fp, dict) else None
    if not isinstance(modules, dict) or len(modules) > MAX_MODULES:
        raise HubError("compatible_with must be {\"model_type\": ..., \"modules\": {path: [shape]}}, "
                       f"with at most {MAX_MODULES} modules (adapterkit.io.hub.search.model_fingerprint "
                       "builds it)", code="BadFingerprint")
    out = {}
    for path, shape in modules.items():
        good = isinstance(shape, list) and all(isinstance(d, int) for d in shape)
        if not isinstance(path, str) or not good:
            raise HubError(f"compatible_with.modules[{str(path)[:80]!r}] must map a module path to a list "
                           "of integers (its weight shape)", code="BadFingerprint")
        out[path] = shape
    return out


def fits(modules: dict[str, list[int]], requires: dict[str, Any] | None) -> bool:
    if not requires:
        return False
    for host, shape in requires.items():
        have = modules.get(host)
        if have is None or (shape is not None and list(shape) != have):
            return False
    return True


def misfits(modules: dict[str, list[int]], requires: dict[str, Any] | None) -> list[str]:
    """Why an adapter does not fit (empty when it does)."""
    if not requires:
        return ["the adapter's host modules could not be read from its files"]
    out = []
    for host, shape in sorted(requires.items()):
        have = modules.get(host)
        if have is None:
            out.append(f"the model has no module {host}")
        elif shape is not None and list(shape) != have:
            out.append(f"{host}: the adapter needs a weight of shape {shape}, the model's is {have}")
    return out
