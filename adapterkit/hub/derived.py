"""Derived artifacts of a LoRA commit, computed from its weights at upload: Arrow prototypes and a
weight embedding.

- **Arrow prototypes** (Ostapenko et al. 2024, "Towards Modular LLMs by Building and Reusing a
  Library of LoRAs", arXiv:2405.11157): at each site, the top right singular vector ``v_1`` of
  ``B A`` (in,), by power iteration on the (r, r) core
  (:func:`adapterkit.core.spectral.top_right_singular`), unit norm, with its largest-magnitude
  entry positive, stored as float32; beside it ``sigma_1`` of ``s B A`` (``s`` the adapter's
  global scale, ``alpha / r`` or ``alpha / sqrt(r)`` with rsLoRA; per-site rank and alpha
  patterns are not applied).
- **Weight embedding** (``EMBEDDING_DIM`` floats, version ``EMBEDDING_VERSION``), for "similar
  adapters": ``e = sum_s (sigma_s / ||sigma||) R_s v_s / sqrt(D)``, L2-normalised, where ``R_s`` is
  a fixed Gaussian (D, in) matrix drawn from NumPy's PCG64 seeded with the first 8 bytes of
  ``sha256("<site>:<in>")``. Two adapters on the same base share ``R_s`` at every common site, so
  ``cos(e, e')`` approximates the sigma-weighted agreement of their prototypes; adapters on
  disjoint sites come out near-orthogonal.

Sites are the host module paths: ``<path>.lora_A`` in adapterkit's format, PEFT's
``base_model.model.<path>.lora_A.weight``. Quantised checkpoints, DoRA and other methods get no
artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.spectral import top_right_singular
from .metadata import safetensors_header

EMBEDDING_DIM = 64
EMBEDDING_VERSION = 1
KIND = "lora-arrow"
WEIGHT_FILES = {"adapterkit": "adapter.safetensors", "peft": "adapter_model.safetensors"}
PEFT_PREFIX = "base_model.model."


@dataclass
class Derived:
    """The artifacts of one adapter: per site its prototype and sigma, and the embedding."""

    prototypes: dict[str, torch.Tensor]  # site -> (in,) float32, unit norm
    sigmas: dict[str, float]
    embedding: list[float]
    seconds: float = 0.0

    def prototype_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {"kind": KIND, "sigmas": json.dumps(self.sigmas)}
        return save({k: v.contiguous() for k, v in sorted(self.prototypes.items())}, metadata=meta)


def lora_format(config: dict[str, Any]) -> tuple[str, float] | None:
    """(format, global scale) of a LoRA ``adapter_config.json``, or None for anything else."""
    if config.get("format") == "adapterkit":
        cfg = config.get("config") if isinstance(config.get("config"), dict) else {}
        assert isinstance(cfg, dict)
        if config.get("method") != "lora" or config.get("quantization"):
            return None
        r, alpha = cfg.get("r", 8), cfg.get("alpha", 16)
        rs = bool(cfg.get("use_rslora"))
        fmt = "adapterkit"
    elif str(config.get("peft_type", "")).upper() == "LORA" and not config.get("use_dora"):
        r, alpha, fmt = config.get("r", 8), config.get("lora_alpha", 8), "peft"
        rs = bool(config.get("use_rslora"))
    else:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in (r, alpha)):
        return None
    return fmt, float(alpha) / (math.sqrt(r) if rs else float(r))


Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def lora_factors(fmt: str, tensors: dict[str, torch.Tensor]) -> Factors:
    """``{site: (A (r, in), B (out, r))}`` from a checkpoint's tensors (2-D pairs only)."""
    kit = fmt == "adapterkit"
    a_suffix, b_suffix = (".lora_A", ".lora_B") if kit else (".lora_A.weight", ".lora_B.weight")
    out = {}
    for key, a in tensors.items():
        if not key.endswith(a_suffix) or key.startswith("head::"):
            continue
        site = key[:-len(a_suffix)]
        b = tensors.get(site + b_suffix)
        if b is None or a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            continue
        if fmt == "peft":
            site = site.removeprefix(PEFT_PREFIX)
        out[site] = (a, b)
    return out


def projection(site: str, n_in: int, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """The fixed (dim, n_in) Gaussian matrix ``R_s`` of a site (see the module doc)."""
    seed = int.from_bytes(hashlib.sha256(f"{site}:{n_in}".encode()).digest()[:8], "little")
    return np.random.Generator(np.random.PCG64(seed)).standard_normal((dim, n_in)) / math.sqrt(dim)


def embedding(prototypes: dict[str, torch.Tensor], sigmas: dict[str, float]) -> list[float]:
    norm = math.sqrt(sum(s * s for s in sigmas.values()))
    e = np.zeros(EMBEDDING_DIM)
    for site in sorted(prototypes):
        v = prototypes[site].double().numpy()
        if norm > 0:
            e += (sigmas[site] / norm) * (projection(site, v.shape[0]) @ v)
    length = float(np.linalg.norm(e))
    return [float(x) for x in (e / length if length > 0 else e)]


def derive(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Derived | None:
    """The artifacts of a LoRA checkpoint (its config and tensors), or None for other adapters
    (or a LoRA checkpoint without usable factor pairs)."""
    start = time.perf_counter()
    found = lora_format(config)
    if found is None:
        return None
    fmt, scale = found
    pairs = lora_factors(fmt, tensors)
    if not pairs:
        return None
    prototypes, sigmas = {}, {}
    for site, (a, b) in sorted(pairs.items()):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            return None
        sigma, v = top_right_singular(a, b)
        prototypes[site] = v.to(torch.float32)
        sigmas[site] = abs(scale) * sigma
    return Derived(prototypes, sigmas, embedding(prototypes, sigmas), time.perf_counter() - start)


def derive_files(config_path: str | Path, weights_path: str | Path) -> Derived | None:
    """:func:`derive` of an ``adapter_config.json`` and its safetensors file on disk."""
    from safetensors.torch import load_file

    config = json.loads(Path(config_path).read_text())
    if not isinstance(config, dict) or lora_format(config) is None:
        return None
    return derive(config, load_file(str(weights_path)))


def read_prototypes(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The prototypes and sigmas of :meth:`Derived.prototype_bytes`."""
    from safetensors.torch import load

    header = safetensors_header(data) or {}
    meta = header.get("__metadata__") or {}
    return load(data), {k: float(v) for k, v in json.loads(meta.get("sigmas", "{}")).items()}


#: SmolLM2-135M's linear shapes (in, out) per decoder layer (30 layers)
SMOLLM2_135M = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192),
                "self_attn.v_proj": (576, 192), "self_attn.o_proj": (576, 576),
                "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536), "mlp.down_proj": (1536, 576)}


def upload_cost(r: int = 8, targets: tuple[str, ...] = ("self_attn.q_proj", "self_attn.v_proj"),
                layers: int = 30, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """The upload-time cost of the artifacts of a random PEFT-format LoRA of rank ``r`` on
    SmolLM2-135M's shapes (``targets``: keys of :data:`SMOLLM2_135M`): the median seconds of
    :func:`derive_files` (reading the safetensors file, prototypes and embedding), of
    :func:`derive` alone, and of the embedding alone, over ``repeats`` runs. For
    ``bench/search.py``."""
    import statistics
    import tempfile

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for t in targets:
            n_in, n_out = SMOLLM2_135M[t]
            key = f"{PEFT_PREFIX}model.layers.{layer}.{t}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, n_in, generator=g) / math.sqrt(n_in)
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, r, generator=g) * 0.01
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(targets)}
    runs: dict[str, list[float]] = {"derive_files_s": [], "derive_s": [], "embedding_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, weights = Path(tmp) / "adapter_config.json", Path(tmp) / "adapter_model.safetensors"
        cfg.write_text(json.dumps(config))
        save_file(tensors, str(weights))
        for _ in range(repeats):  # the three measurements interleave, run after run
            t0 = time.perf_counter()
            derived = derive_files(cfg, weights)
            t1 = time.perf_counter()
            derive(config, tensors)
            t2 = time.perf_counter()
            assert derived is not None
            embedding(derived.prototypes, derived.sigmas)
            t3 = time.perf_counter()
            for key, value in zip(runs, (t1 - t0, t2 - t1, t3 - t2)):
                runs[key].append(value)
        size = weights.stat().st_size
    assert derived is not None
    return {"r": r, "targets": list(targets), "layers": layers, "sites": len(derived.prototypes),
            "weights_bytes": size, "prototypes_bytes": len(derived.prototype_bytes()),
            "repeats": repeats, **{k: statistics.median(v) for k, v in runs.items()}}
