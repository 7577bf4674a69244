"""Exceptions raised by adapterkit. Every message says what was wrong and what is available."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdapterError(Exception):
    """Base class of every error adapterkit raises on purpose."""


class ConfigError(AdapterError, ValueError):
    """A method config has an unknown field, a bad value, or an unknown method name."""


class TargetError(AdapterError, ValueError):
    """A target names no role of the layout, or matches no module of the model."""


class AdapterNameError(AdapterError, KeyError):
    """An adapter name is unknown, malformed, or already taken."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class LoadError(AdapterError, OSError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the model."""


class NotMergeableError(AdapterError, TypeError):
    """merge() was asked of a method that has no weight delta."""


def closest(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to ``word`` (for 'did you mean' hints)."""
    pool = sorted(set(candidates))
    hits = difflib.get_close_matches(word, pool, n=n, cutoff=0.4)
    if hits:
        return hits
    leaf = word.rsplit(".", 1)[-1]
    return [c for c in pool if leaf and leaf in c][:n]


class DistributedError(AdapterError, RuntimeError):
    """An adapter operation that would go wrong under DDP or FSDP (a trainable set that changed
    after wrapping, an adapter added after sharding, a trainable adapter that does not run)."""
