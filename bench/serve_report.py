"""The goals of bench/serve.py judged on its runs, and its report: serve.json, serve.md (tables)
and serve.png (output tokens/s and p99 TTFT at concurrency 32)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve_vs_report import vs_markdown, vs_plot


def _find(runs: list[dict], server: str, case: str, arrival: str = "c=32") -> dict | None:
    return next((r for r in runs if (r["server"], r["case"], r["arrival"]) ==
                 (server, case, arrival)), None)


def _goal(name: str, value: float | None, limit: float, higher: bool, how: str) -> dict[str, Any]:
    met = None if value is None else (value >= limit if higher else value <= limit)
    return {"goal": name, "value": value, "limit": limit, "higher": higher, "met": met, "how": how}


def goals(runs: list[dict], engine: dict) -> list[dict[str, Any]]:
    def tput(server: str, case: str) -> float | None:
        r = _find(runs, server, case)
        return r["output_throughput"] if r else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    k32, one, base = (tput("continuous", c) for c in ("K=32", "one adapter", "base"))
    out = [_goal("K=32 / one adapter, output tok/s at c=32", ratio(k32, one), 0.85, True,
                 "continuous server"),
           _goal("K=32 / base, output tok/s at c=32", ratio(k32, base), 0.75, True,
                 "continuous server")]
    for case in ("K=32", "K=32 varlen"):
        out.append(_goal(f"continuous / static, output tok/s at c=32 ({case})",
                         ratio(tput("continuous", case), tput("static", case)), 3.0, True,
                         "same server, --scheduler static"))
    out.append(_goal("adapterkit / PEFT swapping per batch, output tok/s at c=32 (K=8)",
                     ratio(tput("continuous", "K=8"), tput("peft-swap", "K=8")), 1.0, True,
                     "context, not a goal of the issue"))
    mixed = _find(runs, "k128", "warm+cold")
    alone = _find(runs, "k128", "warm, cold replaced")
    warm = mixed["by_tag"]["warm"]["ttft_ms"]["p99"] if mixed else None
    ref = alone["by_tag"]["warm"]["ttft_ms"]["p99"] if alone else None
    out.append(_goal("warm p99 TTFT with cold adapters / without them (K=128, 32 resident)",
                     ratio(warm, ref), 1.5, False, "24 hot adapters; every 4th request for a "
                     "cold one, or for a hot one instead"))
    http = _find(runs, "overhead", "K=32") or _find(runs, "continuous", "K=32")
    tpot = http["tpot_ms"]["mean"] if http else None
    overhead = (tpot - engine["tpot_ms_mean"]) / engine["tpot_ms_mean"] if tpot else None
    goal = _goal("HTTP/streaming overhead per decode step at c=32 (TPOT vs engine only)",
                 overhead, 0.10, False, "mean TPOT, K=32, the two runs back to back")
    if overhead is not None and overhead < 0:  # the engine alone was slower: nothing resolved
        goal["met"] = None
        goal["how"] += "; the engine-alone run was slower than the server, so not judged"
    out.append(goal)
    return out


def _ms(stats: dict, key: str) -> str:
    v = stats.get(key)
    return "" if v is None else f"{v:.0f}"


def _part(name: str, v: dict) -> str:
    when = f" on {v['date']} (engine at {v['commit']})" if "date" in v else ""
    return f"{name}{when}, {v['minutes']:.0f} min from load average {v['load_avg_start']:.1f}"


def markdown(result: dict) -> str:
    setup = result["setup"]
    parts = "; ".join(_part(p, v) for p, v in setup.get("parts", {}).items())
    lines = [*vs_markdown(result.get("vs_vllm", {})),
             "### adapterkit serve alone (fp32)", "",
             f"{setup['model']}, {setup['prompt_tokens']} prompt / "
             f"{setup['output_tokens']} output tokens, {setup['threads']} torch threads, "
             f"{setup['cores']} cores; runs: {parts}.", "",
             "| server | case | arrival | requests | failed | req/s | out tok/s | TTFT mean / median"
             " / p99 ms | TPOT mean / median / p99 ms | ITL mean / p99 ms | E2EL mean / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        t, p, i, e = r["ttft_ms"], r["tpot_ms"], r["itl_ms"], r["e2el_ms"]
        lines.append(f"| {r['server']} | {r['case']} | {r['arrival']} | {r['requests']} | "
                     f"{r['failed']} | {r['request_throughput']:.3f} | "
                     f"{r['output_throughput']:.1f} | {_ms(t, 'mean')} / {_ms(t, 'median')} / "
                     f"{_ms(t, 'p99')} | {_ms(p, 'mean')} / {_ms(p, 'median')} / {_ms(p, 'p99')} "
                     f"| {_ms(i, 'mean')} / {_ms(i, 'p99')} | {_ms(e, 'mean')} / {_ms(e, 'p99')} |")
    eng = result["engine_only"]
    lines += ["", f"Engine only (no HTTP), K=32, {eng['requests']} requests at once: "
              f"{eng['output_throughput']:.1f} output tok/s, TPOT mean {eng['tpot_ms_mean']:.0f} ms, "
              f"TTFT mean {eng['ttft_ms_mean']:.0f} ms.", "",
              "| goal | value | limit | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        v = "" if g["value"] is None else f"{g['value']:.3f}"
        met = "yes" if g["met"] else "no" if g["met"] is False else "n/a"
        lines.append(f"| {g['goal']} | {v} | {'>=' if g['higher'] else '<='} {g['limit']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["runs"] if r["arrival"] == "c=32"]
    labels = [f"{r['server']}\n{r['case']}" for r in rows]
    vs = result.get("vs_vllm", {})
    fig, axes = plt.subplots(2 if vs.get("main") else 1, 2, figsize=(14, 10 if vs else 5),
                             squeeze=False)
    if vs.get("main"):
        vs_plot(vs, axes[0][0], axes[0][1])
    a, b = axes[-1]
    a.bar(range(len(rows)), [r["output_throughput"] for r in rows], color="tab:blue")
    a.set_title("adapterkit alone: output tokens/s at concurrency 32")
    b.bar(range(len(rows)), [(r["ttft_ms"]["p99"] or 0) / 1000 for r in rows], color="tab:red")
    b.set_title("adapterkit alone: p99 TTFT (s) at concurrency 32")
    for ax in (a, b):
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    fig.suptitle("adapterkit serve, SmolLM2 on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(result: dict, out: Path) -> None:
    (out / "serve.json").write_text(json.dumps(result, indent=1))
    (out / "serve.md").write_text(markdown(result))
    plot(result, out / "serve.png")
    print(markdown(result))
