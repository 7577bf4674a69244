"""Version requirements on optional packages.

A feature that needs a newer release of a package than the one installed says so in an
``AdapterError`` naming the feature, the needed and the installed version, before the package
fails somewhere inside (a ``TypeError`` from a changed signature, say).
"""

from __future__ import annotations

import importlib
import re
import sys

from ..errors import AdapterError


def installed_version(package: str) -> str | None:
    """``package.__version__`` of the module that imports (or is imported) under that name;
    None when it is not installed."""
    module = sys.modules.get(package)
    if module is None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return None
    return str(getattr(module, "__version__", "0"))


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"5.0.0.dev0"`` and ``"5.0"`` give (5, 0, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    parts = tuple(int(p) for p in match.group(0).split(".")) if match else (0,)
    return (*parts, 0, 0, 0)[:max(3, len(parts))]


def require(package: str, needed: str, feature: str, why: str = "") -> None:
    """AdapterError unless ``package`` is installed at version ``needed`` or newer; ``why`` says
    what the feature uses from that version."""
    installed = installed_version(package)
    need = f"{feature} needs {package}>={needed}" + (f" ({why})" if why else "")
    if installed is None:
        raise AdapterError(f"{need}, which is not installed: pip install '{package}>={needed}'")
    if release(installed) < release(needed):
        raise AdapterError(f"{need}; {package} {installed} is installed: "
                           f"pip install '{package}>={needed}'")
