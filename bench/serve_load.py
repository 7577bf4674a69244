"""The load client of bench/serve.py, with vLLM's ``benchmark_serving`` definitions.

Per request (streamed, ``stream_options.include_usage``): TTFT is the time from sending to the
first streamed token, ITL the gaps between streamed chunks, E2EL the end-to-end latency, TPOT
``(E2EL - TTFT) / (output tokens - 1)``. A run reports the mean, median, std and p99 of each,
requests/s, output tokens/s and total tokens/s. Arrivals come at a fixed maximum concurrency or
as a Poisson process at a request rate.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai


@dataclass
class Req:
    model: str
    prompt: list[int]
    max_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    tag: str = ""


@dataclass
class Result:
    tag: str
    ok: bool
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


async def _one(client: openai.AsyncOpenAI, req: Req) -> Result:
    start = time.perf_counter()
    out = Result(req.tag, ok=False)
    last = None
    try:
        stream = await client.completions.create(
            model=req.model, prompt=req.prompt, max_tokens=req.max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, **req.extra})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if last is None:
                    out.ttft = now - start
                else:
                    out.itl.append(now - last)
                last = now
            if chunk.usage is not None:
                out.prompt_tokens = chunk.usage.prompt_tokens
                out.output_tokens = chunk.usage.completion_tokens
        out.e2el = time.perf_counter() - start
        out.ok = out.output_tokens > 0
    except Exception as exc:  # recorded: a failed request counts as failed, not as fast
        out.error = f"{type(exc).__name__}: {exc}"[:300]
    return out


async def _run(url: str, reqs: list[Req], concurrency: int | None, rate: float | None,
               seed: int) -> tuple[list[Result], float]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                timeout=1800)
    results: list[Result] = []
    start = time.perf_counter()
    if rate is None:
        queue = list(reqs)
        sem = asyncio.Semaphore(concurrency or len(reqs))

        async def worker(r: Req) -> None:
            async with sem:
                results.append(await _one(client, r))

        await asyncio.gather(*(worker(r) for r in queue))
    else:
        rng = random.Random(seed)
        tasks = []
        for r in reqs:
            tasks.append(asyncio.create_task(_one(client, r)))
            await asyncio.sleep(rng.expovariate(rate))
        results = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - start
    await client.close()
    return results, duration


def run(url: str, reqs: list[Req], concurrency: int | None = None, rate: float | None = None,
        seed: int = 0) -> tuple[list[Result], float]:
    return asyncio.run(_run(url, reqs, concurrency, rate, seed))


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "std": None, "p99": None}
    return {"mean": statistics.fmean(values) * 1000, "median": statistics.median(values) * 1000,
            "std": (statistics.pstdev(values) * 1000) if len(values) > 1 else 0.0,
            "p99": float(np.percentile(values, 99)) * 1000}  # as benchmark_serving computes it


def summarize(results: list[Result], duration: float, tag: str | None = None) -> dict[str, Any]:
    """vLLM's summary (milliseconds for the latencies), over the results with ``tag`` or all."""
    chosen = [r for r in results if tag is None or r.tag == tag]
    ok = [r for r in chosen if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    return {
        "requests": len(chosen), "completed": len(ok), "failed": len(chosen) - len(ok),
        "errors": sorted({r.error for r in chosen if r.error})[:3],
        "duration_s": duration, "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "ttft_ms": _stats([r.ttft for r in ok]),
        "tpot_ms": _stats([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": _stats([g for r in ok for g in r.itl]),
        "e2el_ms": _stats([r.e2el for r in ok]),
    }
