"""Concurrent greedy requests for different adapters (LoRA, IA3, bottleneck, prefix, prompt,
compositions) equal each request run alone with ``generate()``, token for token, including
requests that join while others are decoding."""

from __future__ import annotations

import threading
import time
from typing import Any

import adapterkit as ak

from .conftest import MODEL_ID, paused

N = 24
PROMPTS = {MODEL_ID: "w1 w2 w3", "lora": "w4 w5 w6 w7", "lora2": "w8 w9", "ia3": "w10 w11 w12",
           "bottleneck": "w13 w14 w15 w16 w17", "prefix": "w18 w19", "prompt": "w20 w21 w22"}
MIXES = {  # extra_body adapters -> the same composition activated alone
    "avg": ([{"name": "lora", "weight": 0.5}, {"name": "lora2", "weight": 1.5}],
            ak.Average("lora", "lora2", weights=[0.5, 1.5])),
    "stack": ([{"name": "ia3", "weight": 0.7}, {"name": "bottleneck"}, {"name": "prefix"}],
              ak.Stack("prefix", ak.Average("ia3", weights=[0.7]), "bottleneck")),
}


def _tokens(client: Any, model: str, prompt: str, n: int = N, **extra: Any) -> list[str]:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0,
                                  logprobs=0, extra_body={"ignore_eos": True, **extra})
    assert r.usage.completion_tokens == n and r.choices[0].finish_reason == "length"
    return r.choices[0].logprobs.tokens


def _concurrently(calls: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run(key: str, fn: Any) -> None:
        out[key] = fn()

    threads = [threading.Thread(target=run, args=(k, f)) for k, f in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def _wait_for(predicate: Any) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_adapters_differ(reference: Any) -> None:
    """Each adapter changes the greedy continuation, so the equality below can fail."""
    base = reference.tokens(MODEL_ID, PROMPTS[MODEL_ID], N)
    for name in PROMPTS:
        if name != MODEL_ID:
            assert reference.tokens(name, PROMPTS[MODEL_ID], N) != base, name
            assert len(set(reference.tokens(name, PROMPTS[name], N))) > 1, name


def test_concurrent_requests_equal_each_alone(server: Any, client: Any, reference: Any) -> None:
    """A long stream starts first; once it has 5 tokens the engine is held until the other
    requests (every adapter kind and two compositions) wait, so all of them join it mid-decode;
    every output equals its request alone."""
    long = client.completions.create(model="lora", prompt="w30 w31", max_tokens=60,
                                     temperature=0, stream=True, logprobs=0,
                                     extra_body={"ignore_eos": True})
    got_long: list[str] = []
    calls = {name: (lambda n=name: _tokens(client, n, PROMPTS[n])) for name in PROMPTS}
    for key, (spec, _) in MIXES.items():
        calls[key] = lambda s=spec: _tokens(client, MODEL_ID, "w40 w41 w42", adapters=s)
    results: dict[str, Any] = {}
    joiner = None
    for chunk in long:
        if chunk.choices and chunk.choices[0].logprobs:
            got_long += chunk.choices[0].logprobs.tokens
        if len(got_long) >= 5 and joiner is None:
            with paused(server):
                joiner = threading.Thread(target=lambda: results.update(_concurrently(calls)))
                joiner.start()
                _wait_for(lambda: server.state.engine.waiting_count() == len(calls))
    assert joiner is not None
    joiner.join(timeout=180)
    assert got_long == reference.tokens("lora", "w30 w31", 60)
    for name in PROMPTS:
        assert results[name] == reference.tokens(name, PROMPTS[name], N), name
    for key, (_, block) in MIXES.items():
        assert results[key] == reference.tokens(block, "w40 w41 w42", N), key


def test_weighted_lora_sum_is_exact(client: Any, reference: Any) -> None:
    """Weights on one LoRA adapter scale its delta: weight 1 is the adapter itself, weight 0 the
    base model."""
    prompt = "w50 w51 w52"
    one = _tokens(client, MODEL_ID, prompt, adapters=[{"name": "lora", "weight": 1.0}])
    zero = _tokens(client, MODEL_ID, prompt, adapters=[{"name": "lora", "weight": 0.0}])
    assert one == reference.tokens("lora", prompt, N)
    assert zero == reference.tokens(MODEL_ID, prompt, N)
    merged = _tokens(client, MODEL_ID, prompt,
                     merged_adapters={"ids": ["lora", "lora2"], "weights": [0.5, 1.5]})
    assert merged == reference.tokens(MIXES["avg"][1], prompt, N)
