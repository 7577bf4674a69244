"""The public names and the package layout: every name ``import adapterkit`` gave before the
package was split into one folder per capability is still there, and the flat modules it
replaced are gone (no two modules name the same thing)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest

import adapterkit as ak

PUBLIC = (
    "IA3", "LAYOUTS", "MAM", "ROLES", "AdapterBias", "AdapterError", "AdapterKit", "AdapterNameError",
    "Average", "BatchSplit", "Bottleneck", "CombineError", "CombineReport", "Compacter",
    "CompositionError", "ConfigError", "DoRA", "DyLoRA", "EigenLoRA", "ExtractionReport", "Fuse",
    "Fusion", "Hydra", "InvertibleAdapter", "Layout", "LoRA", "LoadError", "MethodUnion",
    "NotMergeableError", "Parallel", "PrefixTuning", "PromptTuning", "QuantizeReport", "Route",
    "SHiRA", "SparseAdapter", "Split", "Stack", "SubspaceReport", "TargetError", "UniPELT", "VeRA",
    "__version__", "extract_lora", "methods", "pissa_as_lora", "principal_subspace", "quantize",
    "save_pissa_as_lora", "set_dylora_rank", "snip_prune",
)

#: flat modules of the old layout and where their contents live now
REPLACED = {
    "adapterkit.composition": "adapterkit.compose.blocks",
    "adapterkit.executor": "adapterkit.compose.executor",
    "adapterkit.sites": "adapterkit.core.sites",
    "adapterkit.layouts": "adapterkit.core.layouts",
    "adapterkit.merging": "adapterkit.core.merging",
    "adapterkit.summary": "adapterkit.core.summary",
    "adapterkit.progress": "adapterkit.core.progress",
    "adapterkit.operations": "adapterkit.ops.combine.model",
    "adapterkit.extraction": "adapterkit.ops.extract.model",
    "adapterkit.quantization": "adapterkit.ops.quantize.model",
    "adapterkit.lowrank_adapters": "adapterkit.ops.lowrank.model",
    "adapterkit.subspace": "adapterkit.ops.subspace",
    "adapterkit.hf": "adapterkit.train.models",
    "adapterkit.data": "adapterkit.train.data",
    "adapterkit.cli_ops": "adapterkit.cli.ops",
    "adapterkit.ops.merge": "adapterkit.core.merging",
    "adapterkit.io.native": "adapterkit.core.checkpoint",
    "adapterkit.methods.base": "adapterkit.core.base",
    "adapterkit.compose.kernels": "adapterkit.core.kernels",
    "adapterkit.compose.cache": "adapterkit.core.stack_cache",
}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_importable(name: str) -> None:
    assert name in ak.__all__
    obj = getattr(ak, name)
    assert obj is not None
    assert getattr(importlib.import_module("adapterkit"), name) is obj


def test_all_lists_only_real_names() -> None:
    missing = [n for n in ak.__all__ if not hasattr(ak, n)]
    assert missing == []


@pytest.mark.parametrize(("old", "new"), sorted(REPLACED.items()))
def test_replaced_module_is_gone_and_its_successor_exists(old: str, new: str) -> None:
    assert importlib.util.find_spec(old) is None, f"{old} still exists beside {new}"
    assert inspect.ismodule(importlib.import_module(new))
