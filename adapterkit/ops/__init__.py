"""Pure-tensor adapter operations: combining, extracting and quantising (torch + numpy only)."""

from __future__ import annotations

from .combine.tensors import (
    combine_linear,
    combine_lora_cat,
    combine_lora_svd,
    combine_task_arithmetic,
    dare,
    dare_drop,
    dare_linear,
    dare_ties,
    ties,
    trim_top_density,
)
from .extract.tensors import extract_lora_from_weights, extract_lora_state, site_of
from .lowrank.tensors import LoRAFactors, choose_rank, retained_energy, svd_of_product
from .quantize.tensors import (
    QuantizedTensor,
    dequantize_state,
    dequantize_tensor,
    fake_quantize,
    quantize_state,
    quantize_tensor,
)

__all__ = [
    "LoRAFactors",
    "QuantizedTensor",
    "choose_rank",
    "combine_linear",
    "combine_lora_cat",
    "combine_lora_svd",
    "combine_task_arithmetic",
    "dare",
    "dare_drop",
    "dare_linear",
    "dare_ties",
    "dequantize_state",
    "dequantize_tensor",
    "extract_lora_from_weights",
    "extract_lora_state",
    "fake_quantize",
    "quantize_state",
    "quantize_tensor",
    "retained_energy",
    "site_of",
    "svd_of_product",
    "ties",
    "trim_top_density",
]
