"""The engine's KV cache needs transformers' per-layer Cache API: with an older transformers the
engine refuses a decoder model with the library's version error, naming both versions."""

from __future__ import annotations

import pytest

import adapterkit as ak
from adapterkit.core import requires
from adapterkit.serve.engine import Engine
from adapterkit.serve.kvcache import MIN_TRANSFORMERS
from adapterkit.serve.scheduler import SchedulerConfig

from . import tiny


def _with_transformers(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    real = requires.installed_version
    monkeypatch.setattr(requires, "installed_version",
                        lambda package: version if package == "transformers" else real(package))


def test_an_older_transformers_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_transformers(monkeypatch, "5.12.0")
    with pytest.raises(ak.AdapterError, match=(
            rf"serving decoder models .* needs transformers>={MIN_TRANSFORMERS} \(.*Cache.*\); "
            rf"transformers 5\.12\.0 is installed: pip install 'transformers>={MIN_TRANSFORMERS}'")):
        Engine(tiny.model(), tiny.tokenizer(), SchedulerConfig(max_num_seqs=2), 64)


def test_the_floor_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_transformers(monkeypatch, MIN_TRANSFORMERS)
    engine = Engine(tiny.model(), tiny.tokenizer(), SchedulerConfig(max_num_seqs=2), 64)
    assert engine.kv is not None and engine.kv.slots == 2
