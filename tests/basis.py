"""EigenLoRA bases built on the fly: one per tiny-model family, from random LoRA adapters."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import adapterkit as ak

from .helpers import perturb
from .models import MODELS, build

_ROOT = Path(tempfile.mkdtemp(prefix="adapterkit-eigenlora-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def lora_targets(family: str) -> tuple[str, ...]:
    return MODELS[family].lora_targets or ("attn.q", "attn.v")


@functools.cache
def basis_for(family: str, k: int = 4, sources: int = 3, r: int = 2) -> str:
    """Path of a basis of ``k`` components from ``sources`` random rank-``r`` LoRA adapters on
    ``family``'s q/v (or its own LoRA targets)."""
    kit = ak.AdapterKit(build(family, seed=5))
    out = _ROOT / family
    dirs = []
    for i in range(sources):
        kit.add(f"src{i}", ak.LoRA(r=r, targets=lora_targets(family)))
        perturb(kit, f"src{i}", std=0.3, seed=100 + i)
        kit.save(f"src{i}", out / f"src{i}")
        dirs.append(out / f"src{i}")
    path = out / "basis.safetensors"
    ak.principal_subspace(dirs, k, path)
    return str(path)
