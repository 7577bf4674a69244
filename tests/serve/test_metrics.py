"""``/metrics`` parses as Prometheus text, carries vLLM's names and adapterkit's own, and moves
as requests run; the adapter cache evicts and reloads within its byte budget."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from adapterkit.serve import ServerThread

from .conftest import client_for, http, options, paused

VLLM = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:lora_requests_info", "vllm:prompt_tokens", "vllm:generation_tokens",
        "vllm:request_success", "vllm:time_to_first_token_seconds",
        "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds", "vllm:iteration_tokens_total"]
OURS = ["adapterkit:adapter_loads", "adapterkit:adapter_evictions",
        "adapterkit:distinct_adapters_per_step", "adapterkit:batch_size",
        "adapterkit:adapters_resident", "adapterkit:adapter_resident_bytes"]


def _samples(url: str) -> tuple[set[str], dict[tuple, float]]:
    status, text = http(url + "/metrics")
    assert status == 200
    families, values = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, values


def _get(values: dict, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in values.items()
             if n == name and all(dict(ls).get(k) == val for k, val in labels.items())]
    return sum(found)


def test_metrics_parse_and_move(server: Any, client: Any) -> None:
    families, before = _samples(server.url)
    assert set(VLLM + OURS) <= families
    stream = client.completions.create(model="prefix", prompt="w1 w2 w3", max_tokens=60,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    with paused(server):  # the request is still running while the metrics are read
        _, during = _samples(server.url)
    info = [dict(ls) for (n, ls), _ in during.items() if n == "vllm:lora_requests_info"]
    assert info and "prefix" in info[0]["running_lora_adapters"].split(",")
    assert info[0]["max_lora"] == "32"
    assert _get(during, "vllm:num_requests_running") >= 1
    assert 0 < _get(during, "vllm:kv_cache_usage_perc") < 1
    for _ in chunks:
        pass
    _, after = _samples(server.url)
    assert _get(after, "vllm:prompt_tokens_total") - _get(before, "vllm:prompt_tokens_total") == 3
    assert _get(after, "vllm:generation_tokens_total") - \
        _get(before, "vllm:generation_tokens_total") == 60
    key = {"finished_reason": "length"}
    assert _get(after, "vllm:request_success_total", **key) - \
        _get(before, "vllm:request_success_total", **key) == 1
    for hist in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        assert _get(after, hist + "_count") - _get(before, hist + "_count") == 1
    assert _get(after, "vllm:time_per_output_token_seconds_count") - \
        _get(before, "vllm:time_per_output_token_seconds_count") == 59
    assert _get(after, "adapterkit:batch_size_count") > _get(before, "adapterkit:batch_size_count")


def test_cache_evicts_and_reloads_within_budget(dirs: dict, reference: Any) -> None:
    """A budget of about one adapter: alternating requests evict and reload (off the engine
    thread), and every answer is still its adapter's."""
    srv = ServerThread(options(dirs, ["lora", "ia3", "bottleneck"]))
    cache = srv.state.engine.cache
    budget = max(r.nbytes for r in cache.resident.values())
    srv.stop()
    opts = options(dirs, ["lora", "ia3", "bottleneck"])
    opts.max_resident_bytes = budget
    srv = ServerThread(opts)
    try:
        client = client_for(srv.url)
        for name in ("lora", "ia3", "bottleneck", "lora", "ia3"):
            r = client.completions.create(model=name, prompt="w9 w8", max_tokens=8, temperature=0,
                                          logprobs=0, extra_body={"ignore_eos": True})
            assert r.choices[0].logprobs.tokens == reference.tokens(name, "w9 w8", 8), name
        out: dict = {}
        threads = [threading.Thread(target=lambda n=n: out.update({n: client.completions.create(
            model=n, prompt="w9 w8", max_tokens=8, temperature=0, logprobs=0,
            extra_body={"ignore_eos": True}).choices[0].logprobs.tokens}))
            for n in ("lora", "ia3", "bottleneck")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for name, tokens in out.items():
            assert tokens == reference.tokens(name, "w9 w8", 8), name
        _, values = _samples(srv.url)
        assert _get(values, "adapterkit:adapter_evictions_total") >= 4
        assert _get(values, "adapterkit:adapter_loads_total") >= 7
        assert _get(values, "adapterkit:adapter_resident_bytes") <= budget
    finally:
        srv.stop()


def test_cold_adapter_delays_only_its_own_requests(dirs: dict, reference: Any) -> None:
    """While a cold adapter's load is held on the loader thread, requests for resident adapters
    run to the end; the cold request follows once its load is let go."""
    probe = ServerThread(options(dirs, ["lora"]))
    budget = next(iter(probe.state.engine.cache.resident.values())).nbytes
    probe.stop()
    opts = options(dirs, ["lora", "ia3"])
    opts.max_resident_bytes = budget  # registering ia3 evicts lora
    srv = ServerThread(opts)
    try:
        cache = srv.state.engine.cache
        assert [r.method for r in cache.resident.values()] == ["ia3"]
        gate, original = threading.Event(), cache._load

        def held(*args: Any) -> Any:
            assert gate.wait(60)
            return original(*args)

        cache._load = held  # type: ignore[method-assign]
        client = client_for(srv.url)
        cold: dict = {}

        def ask(name: str, out: dict) -> None:
            out[name] = client.completions.create(
                model=name, prompt="w9 w8", max_tokens=8, temperature=0, logprobs=0,
                extra_body={"ignore_eos": True}).choices[0].logprobs.tokens

        waiter = threading.Thread(target=ask, args=("lora", cold))
        waiter.start()
        warm: dict = {}
        ask("ia3", warm)  # served while lora's load is held
        assert waiter.is_alive() and not cold
        assert warm["ia3"] == reference.tokens("ia3", "w9 w8", 8)
        gate.set()
        waiter.join(timeout=60)
        assert cold["lora"] == reference.tokens("lora", "w9 w8", 8)
    finally:
        gate.set()
        srv.stop()
