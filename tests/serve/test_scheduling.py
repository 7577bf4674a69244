"""Scheduling: the cap on distinct adapters (a request over it waits, the rest go on, nothing
starves), the prefill budget, static batching, the bounded queue (429), queue timeouts, and a
disconnecting client freeing its row."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapterkit.serve import SchedulerConfig, ServerThread
from adapterkit.serve.sampling import SamplingParams
from adapterkit.serve.scheduler import Scheduler
from adapterkit.serve.selection import Item, Selection
from adapterkit.serve.sequence import Sequence

from .conftest import MODEL_ID, client_for, http, options


def _seq(adapter: str | None, prompt: int = 4) -> Sequence:
    from adapterkit.core.base import MethodKind

    items = (Item(adapter, 1.0, MethodKind.WEIGHT_DELTA, adapter),) if adapter else ()
    return Sequence("r", 0, [5] * prompt, SamplingParams(), Selection(items), lambda e: None,
                    text=None)  # type: ignore[arg-type]


def _admit(sched: Scheduler, running: list, ready: Any = lambda s: True) -> list:
    new = sched.admit(running, ready)
    running += new
    return new


def test_cap_waits_without_blocking_others_and_nothing_starves() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_active_adapters=2, patience=3))
    a1, b1, c1, a2, b2 = _seq("a"), _seq("b"), _seq("c"), _seq("a"), _seq("b")
    for s in (a1, b1, c1, a2, b2):
        sched.add(s)
    running: list = []
    assert _admit(sched, running) == [a1, b1, a2, b2]  # c would be a third adapter: it waits
    assert c1.skipped == 1
    late = [_seq("a") for _ in range(3)]
    for s in late:
        sched.add(s)
    assert _admit(sched, running) == late[:3]  # c waits (2 steps), the rest go on
    more = _seq("b")
    sched.add(more)
    assert _admit(sched, running) == []  # c has waited 3 steps: nobody jumps it any more
    running[:] = [s for s in running if s.selection.names != ["a"]]  # the a rows finish
    assert _admit(sched, running) == [c1, more]


def test_prefill_budget_loading_and_static() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_prefill_tokens=10))
    long, s1, s2, s3 = _seq(None, 30), _seq(None, 6), _seq(None, 4), _seq("x", 2)
    for s in (long, s1, s2, s3):
        sched.add(s)
    running: list = []
    assert _admit(sched, running) == [long]  # the first one goes whatever its length
    assert _admit(sched, running, ready=lambda s: s is not s1) == [s2, s3]  # s1's adapter loads
    assert _admit(sched, running) == [s1]
    static = Scheduler(SchedulerConfig(max_num_seqs=2, policy="static"))
    for s in (_seq(None), _seq(None), _seq(None)):
        static.add(s)
    batch: list = []
    assert len(_admit(static, batch)) == 2 and _admit(static, batch) == []
    assert len(_admit(static, [])) == 1
    with pytest.raises(ValueError, match="policy"):
        SchedulerConfig(policy="fifo")


def _metric(url: str, name: str, **labels: str) -> float:
    text = http(url + "/metrics")[1]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def _wait(predicate: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def narrow(dirs: dict) -> Any:
    """One row and one waiting request."""
    srv = ServerThread(options(dirs, ["lora"], max_num_seqs=1, max_waiting=1))
    yield srv
    srv.stop()


def _long_stream(client: Any) -> Any:
    return client.completions.create(model="lora", prompt="w1 w2", max_tokens=200,
                                     temperature=0, stream=True, extra_body={"ignore_eos": True})


def test_disconnect_frees_the_row(narrow: Any) -> None:
    client = client_for(narrow.url)
    stream = _long_stream(client)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert _metric(narrow.url, "vllm:num_requests_running") == 1
    stream.response.close()  # the client goes away mid-stream
    _wait(lambda: _metric(narrow.url, "vllm:num_requests_running") == 0)
    r = client.completions.create(model=MODEL_ID, prompt="w3", max_tokens=4,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4  # the freed row serves the next request


def test_full_queue_answers_429(narrow: Any) -> None:
    client = client_for(narrow.url)
    stream = _long_stream(client)
    next(iter(stream))
    waiting: dict = {}
    t = threading.Thread(target=lambda: waiting.update(r=http(
        narrow.url + "/v1/completions", "POST", {"model": MODEL_ID, "prompt": "w4"})))
    t.start()
    _wait(lambda: _metric(narrow.url, "vllm:num_requests_waiting") == 1)
    with pytest.raises(openai.RateLimitError) as exc:
        client.completions.create(model=MODEL_ID, prompt="w5", max_tokens=2)
    assert exc.value.status_code == 429 and "queue is full" in str(exc.value)
    stream.response.close()
    t.join(timeout=30)
    assert waiting["r"][0] == 200  # served once the row was free
    _wait(lambda: _metric(narrow.url, "vllm:num_requests_running") == 0)


def test_queue_timeout(dirs: dict) -> None:
    srv = ServerThread(options(dirs, [], max_num_seqs=1, queue_timeout=0.1))
    try:
        client = client_for(srv.url)
        stream = client.completions.create(model=MODEL_ID, prompt="w1", max_tokens=250,
                                           stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        status, text = http(srv.url + "/v1/completions", "POST",
                            {"model": MODEL_ID, "prompt": "w4", "max_tokens": 2})
        assert status == 503 and "--queue-timeout" in text
        stream.response.close()
    finally:
        srv.stop()


def test_cap_over_http_keeps_one_adapter_per_step(dirs: dict, reference: Any) -> None:
    srv = ServerThread(options(dirs, ["lora", "ia3", "prefix"], max_num_seqs=4,
                               max_active_adapters=1))
    try:
        client = client_for(srv.url)
        out: dict = {}

        def go(name: str) -> None:
            out[name] = client.completions.create(
                model=name, prompt="w7 w8", max_tokens=10, temperature=0, logprobs=0,
                extra_body={"ignore_eos": True}).choices[0].logprobs.tokens

        threads = [threading.Thread(target=go, args=(n,)) for n in ("lora", "ia3", "prefix")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for name in ("lora", "ia3", "prefix"):
            assert out[name] == reference.tokens(name, "w7 w8", 10)
        steps = _metric(srv.url, "adapterkit:distinct_adapters_per_step_count")
        one = _metric(srv.url, "adapterkit:distinct_adapters_per_step_bucket", le="1.0")
        assert steps > 0 and one == steps
    finally:
        srv.stop()
