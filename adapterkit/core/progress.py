"""Progress bars for long work (training, evaluation, extraction): tqdm when it is installed."""

from __future__ import annotations

from typing import Any


def progress(iterable: Any, total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar when tqdm is installed and enabled, else the iterable itself."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
