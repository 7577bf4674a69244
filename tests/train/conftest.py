"""Shared pieces of the training tests: SmolLM2 from the installed package (a missing package
fails the test with the install command), and small SFT data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from adapterkit.train.smollm2 import smollm2_dir

    return str(smollm2_dir())  # raises AdapterError naming the install command when missing


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


FRUITS = ["apple", "pear", "plum", "fig", "lime", "kiwi"]


def fruit_records(n: int, offset: int = 0) -> list[dict[str, str]]:
    """Prompt-completion records whose answer follows from the prompt (a fixed code word)."""
    return [{"prompt": f"Item {i}: the {FRUITS[i % len(FRUITS)]} basket. What is the code word?",
             "completion": "Zebra"} for i in range(offset, offset + n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
