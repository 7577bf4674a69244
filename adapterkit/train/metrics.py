"""Task metrics: accuracy, F1 (binary and macro), Matthews correlation, Pearson and Spearman
correlation, and exact match of generated text."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError


def accuracy(preds: Sequence[int], gold: Sequence[int]) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(gold))) if len(gold) else 0.0


def _f1_of(p: np.ndarray, g: np.ndarray, cls: int) -> float:
    tp = float(np.sum((p == cls) & (g == cls)))
    fp, fn = float(np.sum((p == cls) & (g != cls))), float(np.sum((p != cls) & (g == cls)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1(preds: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """F1 of class ``positive`` (GLUE's F1 for MRPC and QQP)."""
    return _f1_of(np.asarray(preds), np.asarray(gold), positive)


def macro_f1(preds: Sequence[int], gold: Sequence[int]) -> float:
    p, g = np.asarray(preds), np.asarray(gold)
    classes = np.union1d(p, g)
    return float(np.mean([_f1_of(p, g, int(c)) for c in classes])) if len(classes) else 0.0


def mcc(preds: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation (multi-class form, Gorodkin 2004); 0 when undefined."""
    p, g = np.asarray(preds), np.asarray(gold)
    classes = np.union1d(p, g)
    k = len(classes)
    if k == 0:
        return 0.0
    conf = np.zeros((k, k))
    pi, gi = np.searchsorted(classes, p), np.searchsorted(classes, g)
    np.add.at(conf, (gi, pi), 1)
    t, pr, c, s = conf.sum(1), conf.sum(0), np.trace(conf), conf.sum()
    denom = np.sqrt((s * s - pr @ pr) * (s * s - t @ t))
    return float((c * s - t @ pr) / denom) if denom > 0 else 0.0


def pearson(preds: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    p, g = np.asarray(preds, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(p) < 2 or p.std() == 0 or g.std() == 0:
        return 0.0
    return float(np.corrcoef(p, g)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(preds: Sequence[float], gold: Sequence[float]) -> float:
    p, g = np.asarray(preds, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    return pearson(_ranks(p), _ranks(g)) if len(p) >= 2 else 0.0


def normalize(text: str) -> str:
    """Lower case, surrounding whitespace and final punctuation dropped."""
    return text.strip().strip(" .!").lower()


def exact_match(generated: Sequence[str], gold: Sequence[str]) -> float:
    if not gold:
        return 0.0
    return sum(normalize(a) == normalize(b) for a, b in zip(generated, gold)) / len(gold)


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc,
    "pearson": pearson, "spearman": spearman, "exact_match": exact_match,
}


def compute(names: Sequence[str], preds: Sequence, gold: Sequence) -> dict[str, float]:
    """``{name: metric(preds, gold)}`` for each of ``names`` (keys of :data:`METRICS`)."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; metrics: {sorted(METRICS)}")
    return {n: METRICS[n](preds, gold) for n in names}
