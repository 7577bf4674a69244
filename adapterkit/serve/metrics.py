"""``GET /metrics``: Prometheus text with vLLM's metric names (which dashboards and the Kubernetes
inference gateway read) and adapterkit's own (``adapterkit:*``). Every metric carries the
``model_name`` label. Gauges are read from the engine when scraped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from .engine import Engine
    from .sequence import Sequence

_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
            7.5, 10.0, 20.0, 40.0, 80.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.engine: Engine | None = None
        label = ["model_name"]
        r = self.registry
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefilled prompt tokens.", label,
                                     registry=r).labels(model_name)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", label,
                                         registry=r).labels(model_name)
        self.success = Counter("vllm:request_success", "Finished requests.",
                               [*label, "finished_reason"], registry=r)
        self.ttft = self._hist("vllm:time_to_first_token_seconds", "Time to first token.")
        self.tpot = self._hist("vllm:time_per_output_token_seconds", "Time between tokens.")
        self.e2e = self._hist("vllm:e2e_request_latency_seconds", "End-to-end request latency.")
        self.queue = self._hist("vllm:request_queue_time_seconds", "Time waiting for a slot.")
        self.iteration = self._hist("vllm:iteration_tokens_total", "Tokens per engine step.",
                                    _COUNTS)
        self.loads = Counter("adapterkit:adapter_loads", "Adapters made resident.", label,
                             registry=r).labels(model_name)
        self.evictions = Counter("adapterkit:adapter_evictions",
                                 "Resident adapters evicted for the byte budget.", label,
                                 registry=r).labels(model_name)
        self.distinct = self._hist("adapterkit:distinct_adapters_per_step",
                                   "Distinct adapters in one decode step.", _COUNTS)
        self.batch = self._hist("adapterkit:batch_size", "Rows in one decode step.", _COUNTS)
        r.register(_Gauges(self))

    def _hist(self, name: str, doc: str, buckets: tuple = _LATENCY) -> Any:
        return Histogram(name, doc, ["model_name"], buckets=buckets,
                         registry=self.registry).labels(self.model_name)

    # -- called by the engine thread ---------------------------------------------------------
    def prefill(self, tokens: int) -> None:
        self.prompt_tokens.inc(tokens)
        self.iteration.observe(tokens)

    def step(self, rows: int, distinct: int) -> None:
        self.batch.observe(rows)
        self.distinct.observe(distinct)
        self.iteration.observe(rows)

    def first_token(self, seq: Sequence) -> None:
        assert seq.first_token is not None
        self.ttft.observe(seq.first_token - seq.arrival)
        if seq.admitted is not None:
            self.queue.observe(seq.admitted - seq.arrival)

    def inter_token(self, seconds: float) -> None:
        self.tpot.observe(seconds)

    def finished(self, seq: Sequence, reason: str) -> None:
        self.success.labels(self.model_name, reason).inc()
        self.e2e.observe(time.perf_counter() - seq.arrival)

    def adapter_event(self, kind: str) -> None:
        (self.loads if kind == "load" else self.evictions).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges:
    """Gauges read from the engine at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine, name = self.m.engine, self.m.model_name
        running = list(engine.running) if engine is not None else []
        waiting = list(engine.scheduler.waiting) if engine is not None else []
        pending = engine.waiting_count() if engine is not None else 0
        yield _gauge("vllm:num_requests_running", "Sequences in the running batch.",
                     len(running), name)
        yield _gauge("vllm:num_requests_waiting", "Sequences waiting for a slot.", pending, name)
        usage = engine.kv.usage() if engine is not None and engine.kv is not None else 0.0
        yield _gauge("vllm:kv_cache_usage_perc", "Fraction of the KV cache in use.", usage, name)
        info = GaugeMetricFamily(
            "vllm:lora_requests_info", "Adapters of running and waiting requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        cap = engine.config.max_active_adapters if engine is not None else 0
        run_names = sorted({n for s in running for n in s.selection.names})
        wait_names = sorted({n for s in waiting for n in s.selection.names})
        info.add_metric([str(cap), ",".join(run_names), ",".join(wait_names)], time.time())
        yield info
        cache = engine.cache if engine is not None else None
        yield _gauge("adapterkit:adapters_registered", "Served adapter names.",
                     len(cache.names()) if cache else 0, name)
        yield _gauge("adapterkit:adapters_resident", "Adapters attached to the model.",
                     len(cache.resident) if cache else 0, name)
        yield _gauge("adapterkit:adapter_resident_bytes", "Bytes of resident adapters.",
                     cache.resident_bytes() if cache else 0, name)
        yield _gauge("adapterkit:adapter_budget_bytes", "Byte budget of resident adapters "
                     "(-1: none).", cache.budget if cache and cache.budget is not None else -1,
                     name)


def _gauge(metric: str, doc: str, value: float, model_name: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(metric, doc, labels=["model_name"])
    g.add_metric([model_name], value)
    return g
