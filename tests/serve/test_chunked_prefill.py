"""Chunked prefill: with a per-step prefill budget smaller than the prompts, prompts are prefilled
over several steps while other rows decode, and greedy outputs equal each request run alone with
``generate()`` (unchunked); the static baseline fills all its rows before any decodes."""

from __future__ import annotations

from typing import Any

import pytest

from adapterkit.serve import ServerThread
from adapterkit.serve.prefill import plan
from adapterkit.serve.sequence import Sequence

from .conftest import MODEL_ID, client_for, options
from .test_batching import _concurrently, _tokens

PROMPTS = {MODEL_ID: "w1 w2 w3 w4 w5 w6 w7", "lora": "w4 w5 w6 w7 w8",
           "ia3": "w10 w11 w12 w13 w14 w15", "prefix": "w18 w19 w20 w21"}


class _Job:
    def __init__(self, rows: int, left: int, whole: bool = False) -> None:
        self.seqs: list[Sequence] = [None] * rows  # type: ignore[list-item]
        self.left, self.whole = left, whole


def test_plan_spends_the_budget_oldest_first() -> None:
    a, b, c = _Job(2, 5), _Job(1, 3), _Job(4, 2)
    assert [(j, n) for j, n in plan([a, b, c], 6)] == [(a, 3)]  # 2 rows x 3 tokens
    assert plan([b, c], 6) == [(b, 3)]  # c's 4 rows cannot each get a token from what is left
    assert plan([b, c], 7) == [(b, 3), (c, 1)]
    assert plan([c], 2) == [(c, 1)]  # the first job moves even when its rows exceed the budget
    whole = _Job(1, 9, whole=True)
    assert plan([whole, b], 4) == [(whole, 9)]  # prompt/prefix adapters: whole, first
    assert plan([b, whole], 4) == [(b, 3)]  # not split, and nothing behind it jumps it


@pytest.fixture(scope="module")
def chunked(dirs: dict) -> Any:
    srv = ServerThread(options(dirs, list(PROMPTS)[1:], max_prefill_tokens=3))
    shapes: list[tuple[int, int]] = []
    engine = srv.state.engine
    forward = engine.forward

    def spy(entries: list, module: Any = None, **kw: Any) -> Any:
        shapes.append(tuple(kw["input_ids"].shape))
        return forward(entries, module, **kw)

    engine.forward = spy  # type: ignore[method-assign]
    srv.shapes = shapes  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_chunked_prefill_equals_unchunked_greedy(chunked: Any, reference: Any) -> None:
    client = client_for(chunked.url)
    calls = {name: (lambda n=name: _tokens(client, n, PROMPTS[n])) for name in PROMPTS}
    results = _concurrently(calls)
    for name, prompt in PROMPTS.items():
        assert results[name] == reference.tokens(name, prompt, 24), name
    prefill = [s for s in chunked.shapes if s[1] > 1]
    assert max(r * t for r, t in prefill) <= 4  # the budget of 3, or the prefix's whole prompt
    assert len(prefill) >= 5  # the 7-token prompt alone takes three forwards


def test_static_batch_prefills_every_row_first(dirs: dict, reference: Any) -> None:
    with ServerThread(options(dirs, ["lora"], max_prefill_tokens=2, policy="static",
                              max_num_seqs=3)) as srv:
        engine = srv.state.engine
        seen: list[tuple[int, int]] = []
        decode = engine._decode

        def spy() -> None:
            seen.append((len(engine.running), len(engine.jobs)))
            decode()

        engine._decode = spy  # type: ignore[method-assign]
        client = client_for(srv.url)
        prompts = {"a": "w1 w2 w3 w4 w5", "b": "w6 w7 w8 w9", "c": "w2 w3 w4"}
        results = _concurrently(
            {k: (lambda p=p: _tokens(client, "lora", p)) for k, p in prompts.items()})
    for k, p in prompts.items():
        assert results[k] == reference.tokens("lora", p, 24), k
    assert seen and all(jobs == 0 for _, jobs in seen)
