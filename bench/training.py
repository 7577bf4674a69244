"""Training step time, peak memory and checkpoint size of adapterkit's LoRA beside PEFT's on
SmolLM2-135M-Instruct: LoRA r=16 on every linear layer, batch 4 x 256 tokens, AdamW, for an fp32
base, an fp32 base under ``torch.autocast("cpu", torch.bfloat16)`` and a bitsandbytes NF4 base,
each with gradient checkpointing off and on.

    python bench/training.py     # writes bench/results/training.{json,md,png}
    TRAIN_BENCH_STEPS=3 TRAIN_BENCH_WARMUP=1   # timed and untimed steps per case (defaults)
    TRAIN_BENCH_ROUNDS=2                       # processes per case and library (default)
    TRAIN_BENCH_ONLY=bf16-autocast:on,nf4:off  # rerun these configurations, keep the other rows

Step time: one process per configuration holds both libraries' models (two copies of the base)
and runs their steps in turns, A B B A A B ..., ``TRAIN_BENCH_STEPS`` timed steps each after
``TRAIN_BENCH_WARMUP`` untimed; s/step is each library's median. Processes of the same
configuration differ by up to 15% here, so two processes per library, however many, would
measure the machine as much as the libraries. Peak memory: every library and configuration
also runs in its own process (so that its peak is its own), adapterkit and PEFT one after the
other, in alternating order over ``TRAIN_BENCH_ROUNDS`` rounds; the largest resident set
sampled during the steps (MiB, base model included), its median over the rounds. Those
processes' own s/step is kept in the JSON (``separate_s_per_step``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

STEPS = int(os.environ.get("TRAIN_BENCH_STEPS", "3"))
WARMUP = int(os.environ.get("TRAIN_BENCH_WARMUP", "1"))
ROUNDS = int(os.environ.get("TRAIN_BENCH_ROUNDS", "2"))
CONFIGS = [(base, ckpt) for base in ("fp32", "bf16-autocast", "nf4") for ckpt in (False, True)]
BATCH, LENGTH, RANK = 4, 256, 16
ONLY = [x.strip() for x in os.environ.get("TRAIN_BENCH_ONLY", "").split(",") if x.strip()]


def chosen() -> list[tuple[str, bool]]:
    """The configurations to run: all, or those ``TRAIN_BENCH_ONLY`` names (``base:on|off``)."""
    names = {f"{base}:{'on' if ckpt else 'off'}": (base, ckpt) for base, ckpt in CONFIGS}
    unknown = [x for x in ONLY if x not in names]
    if unknown:
        raise SystemExit(f"TRAIN_BENCH_ONLY: unknown {unknown}; use some of {sorted(names)}")
    return [names[x] for x in ONLY] if ONLY else CONFIGS


def _model(base: str) -> Any:
    import torch
    import transformers as T

    from adapterkit.train.smollm2 import smollm2_dir

    path = str(smollm2_dir())
    if base == "nf4":
        q = T.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_compute_dtype=torch.float32)
        return T.AutoModelForCausalLM.from_pretrained(path, quantization_config=q, device_map="cpu")
    return T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _adapt(model: Any, library: str) -> tuple[Any, list[Any], Any]:
    if library == "adapterkit":
        import adapterkit as ak

        kit = ak.AdapterKit(model)
        kit.add("a", ak.LoRA(r=RANK, alpha=2 * RANK, targets=("all-linear",)))
        return model, kit.train("a"), lambda d: kit.save("a", d)
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK,
                                            target_modules="all-linear", lora_dropout=0.0))
    return peft, [p for p in peft.parameters() if p.requires_grad], peft.save_pretrained


def _trainer(library: str, base: str, ckpt: bool) -> tuple[Any, list[Any], Any, list[float]]:
    """(one timed training step, the trainable parameters, save, the step times)."""
    import torch

    model = _model(base)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model, params, save = _adapt(model, library)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(5, 49000, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    times: list[float] = []

    def step() -> None:
        t0 = time.perf_counter()
        if base == "bf16-autocast":
            with torch.autocast("cpu", torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)

    return step, params, save, times


def case(library: str, base: str, ckpt: bool) -> dict[str, Any]:
    """One library and configuration in this process."""
    from common import peak_rss_growth, pin_threads, rss_mib

    pin_threads()
    warnings.filterwarnings("ignore")
    step, params, save, times = _trainer(library, base, ckpt)
    for _ in range(WARMUP):  # optimizer state, kernels
        step()
    times.clear()
    before = rss_mib()
    growth = peak_rss_growth(step, STEPS)
    with tempfile.TemporaryDirectory() as d:
        save(d)
        size = sum(f.stat().st_size for f in Path(d).iterdir() if f.suffix == ".safetensors")
    return {"library": library, "base": base, "checkpointing": ckpt,
            "s_per_step": statistics.median(times), "steps": times,
            "peak_mib": before + growth, "checkpoint_bytes": size,
            "trainable": sum(p.numel() for p in params)}


def pair(base: str, ckpt: bool) -> dict[str, Any]:
    """Both libraries in this process, their steps in turns (A B B A ...): s/step of each."""
    from common import pin_threads

    pin_threads()
    warnings.filterwarnings("ignore")
    runs = {lib: _trainer(lib, base, ckpt) for lib in ("adapterkit", "peft")}
    for _ in range(WARMUP):
        for step, *_rest in runs.values():
            step()
    for _step, _params, _save, times in runs.values():
        times.clear()
    for i in range(STEPS):
        for lib in (("adapterkit", "peft") if i % 2 == 0 else ("peft", "adapterkit")):
            runs[lib][0]()
    return {lib: {"s_per_step": statistics.median(r[3]), "steps": list(r[3])} for lib, r in runs.items()}


def _run(library: str, base: str, ckpt: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", library, base, str(int(ckpt))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{library} {base} ckpt={ckpt} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    from common import table

    ratios, lines = [], []
    loads = [r["loadavg"] for row in rows for r in row.get("rounds", [row])]
    loads += [row["paired_load"] for row in rows if "paired_load" in row]
    for base, ckpt in CONFIGS:
        ours, peft = (next(r for r in rows if r["library"] == lib and r["base"] == base
                           and r["checkpointing"] == ckpt) for lib in ("adapterkit", "peft"))
        t, m = ours["s_per_step"] / peft["s_per_step"], ours["peak_mib"] / peft["peak_mib"]
        ratios.append({"base": base, "checkpointing": ckpt, "time_ratio": t, "memory_ratio": m})
        lines.append((base, "on" if ckpt else "off", f"{ours['s_per_step']:.2f}",
                      f"{peft['s_per_step']:.2f}", f"{t:.3f}", f"{ours['peak_mib']:.0f}",
                      f"{peft['peak_mib']:.0f}", f"{m:.3f}"))
    ours_b = rows[0]["checkpoint_bytes"]
    peft_b = next(r for r in rows if r["library"] == "peft")["checkpoint_bytes"]
    head = ("base", "checkpointing", "ours s/step", "PEFT s/step", "time ours/PEFT",
            "ours peak MiB", "PEFT peak MiB", "memory ours/PEFT")
    md = (f"SmolLM2-135M-Instruct, LoRA r={RANK} on every linear layer, batch {BATCH} x {LENGTH} "
          f"tokens, AdamW. s/step: median of {STEPS} timed step(s) after {WARMUP} untimed, both "
          f"libraries in one process per configuration, their steps in turns; peak memory: one "
          f"process per library and configuration, median over {ROUNDS} round(s) in alternating "
          f"order; 1-minute load "
          f"average {min(loads):.2f} to {max(loads):.2f}.\n\n"
          + table(lines, head) + f"\n\nCheckpoint bytes: adapterkit {ours_b:,}, PEFT {peft_b:,} "
          f"({rows[0]['trainable']:,} trainable parameters).\n")
    counts = sorted({(r["base"], r["checkpointing"], len(r.get("rounds", [r]))) for r in rows})
    if len({c[2] for c in counts}) > 1:
        md += "\nMemory rounds per configuration: " + ", ".join(
            f"{b} checkpointing {'on' if c else 'off'} {n}" for b, c, n in counts) + ".\n"
    return md, ratios


def plot(ratios: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['base']}\nckpt {'on' if r['checkpointing'] else 'off'}" for r in ratios]
    x = range(len(ratios))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar([i - 0.2 for i in x], [r["time_ratio"] for r in ratios], 0.4, label="s/step")
    ax.bar([i + 0.2 for i in x], [r["memory_ratio"] for r in ratios], 0.4, label="peak memory")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("adapterkit / PEFT")
    ax.set_title("LoRA training on SmolLM2-135M (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a case's processes: s/step from the process that ran both libraries in
    turns, peak memory (and ``separate_s_per_step``) the median over its own processes."""
    row = dict(runs[0])
    row["separate_s_per_step"] = statistics.median(r["s_per_step"] for r in runs)
    paired = row.pop("paired")
    row["s_per_step"], row["paired_steps"], row["paired_load"] = (
        paired["s_per_step"], paired["steps"], paired["loadavg"])
    row["peak_mib"] = statistics.median(r["peak_mib"] for r in runs)
    row["rounds"] = [{"s_per_step": r["s_per_step"], "peak_mib": r["peak_mib"],
                      "loadavg": r["loadavg"]} for r in runs]
    return row


def main() -> None:
    from common import RESULTS, write

    runs: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
    configs = chosen()
    for base, ckpt in configs:
        for round_ in range(ROUNDS):  # the order alternates, so drifting load hits both sides
            order = ("adapterkit", "peft") if round_ % 2 == 0 else ("peft", "adapterkit")
            for library in order:
                load = os.getloadavg()[0]
                run = {**_run(library, base, ckpt), "loadavg": round(load, 2)}
                runs.setdefault((library, base, ckpt), []).append(run)
                print(f"{library} {base} ckpt={ckpt} round {round_}: {run['s_per_step']:.2f} "
                      f"s/step, {run['peak_mib']:.0f} MiB (load {load:.2f})", flush=True)
        load = os.getloadavg()[0]
        paired = _run("pair", base, ckpt)
        for library in ("adapterkit", "peft"):
            runs[(library, base, ckpt)][0]["paired"] = {**paired[library], "loadavg": round(load, 2)}
        print(f"{base} ckpt={ckpt} in turns: adapterkit {paired['adapterkit']['s_per_step']:.2f}, "
              f"peft {paired['peft']['s_per_step']:.2f} s/step (load {load:.2f})", flush=True)
    rows = [_merge(r) for r in runs.values()]
    if ONLY:  # the other configurations' rows stay as the last full run wrote them
        old = json.loads((RESULTS / "training.json").read_text())["rows"]
        kept = [r for r in old if (r["base"], r["checkpointing"]) not in configs]
        rows = kept + rows
    md, ratios = report(rows)
    write("training", {"steps": STEPS, "rounds": ROUNDS, "rerun": ONLY, "rows": rows, "ratios": ratios})
    (RESULTS / "training.md").write_text(md)
    plot(ratios, RESULTS / "training.png")
    print(md)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        library, base, ckpt = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
        print(json.dumps(pair(base, ckpt) if library == "pair" else case(library, base, ckpt)))
    else:
        main()
