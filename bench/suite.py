"""The benchmark suite (``make bench``): adapterkit vs PEFT side by side on MiniLM / SST-2.

Measured in one run, interleaved where timed, threads pinned, medians:
- training step time (batch 32, length 64) for LoRA r=8 on q,v and for a bottleneck adapter;
- peak resident memory of those training steps, each in its own process;
- forward latency: base, unmerged, merged (bench/overhead.py);
- load time of the 1st and the 32nd adapter;
- trainable parameter counts for identical configs.
AdapterHub's ``adapters`` joins every measure it has (training steps, memory, forward, loading,
counts) when ``make adapters-venv`` has made its environment (bench/adapters_side.py); else the
suite prints why it is left out.
Writes bench/results/latest.json, latest.md and latest.png. BENCH_ROUNDS scales the rounds.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from adapters_side import adapters_ratios  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    interleaved,
    machine,
    make_step,
    peak_rss_growth,
    pin_threads,
    table,
)

import adapterkit as ak  # noqa: E402
from adapterkit.train.data import get_task  # noqa: E402
from adapterkit.train.models import load_classifier  # noqa: E402

PEFT_LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"],
             "modules_to_save": ["classifier"]}


def sst2_batch(tok) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """32 SST-2 training sentences padded to 64 tokens, and their labels."""
    data = get_task("sst2").split("train", limit=32)
    enc = tok([ex.texts[0] for ex in data], padding="max_length", truncation=True, max_length=64,
              return_tensors="pt")
    return dict(enc), torch.tensor([ex.label for ex in data])


def ours(base: torch.nn.Module, method: str) -> tuple[torch.nn.Module, list]:
    m = copy.deepcopy(base)
    kit = ak.AdapterKit(m)
    # the bottleneck is Pfeiffer's (AdapterHub's SeqBnConfig): after the FFN, reading LN(h + x)
    kit.add("a", ak.LoRA(r=8, alpha=16) if method == "lora"
            else ak.Bottleneck(reduction=16, original_ln_before=True))
    return m, kit.train("a", train_also=("classifier",))


def peft(base: torch.nn.Module) -> tuple[torch.nn.Module, list]:
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(copy.deepcopy(base), LoraConfig(**PEFT_LORA))
    return m, [p for p in m.parameters() if p.requires_grad]


def training(base, tok, rounds: int, side=None) -> tuple[dict[str, float], dict[str, int]]:
    batch, labels = sst2_batch(tok)
    variants = {"ours LoRA": ours(base, "lora"), "PEFT LoRA": peft(base),
                "ours Bottleneck": ours(base, "bottleneck")}
    counts = {k: sum(p.numel() for p in ps) for k, (_, ps) in variants.items()}
    steps = {k: make_step(m, ps, batch, labels) for k, (m, ps) in variants.items()}
    if side is not None:
        counts.update(side.counts())
        steps.update({k: side.case(k) for k in ("adapters LoRA", "adapters Bottleneck")})
    return interleaved(steps, rounds=rounds, warmup=2), counts


def peak_memory(variant: str) -> float:
    """Peak growth of resident memory (MiB) during 5 training steps of ``variant``, in a fresh
    process, over its resident memory once the model is built (loading peaks are left out)."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import suite;"
            f"print(suite._memory_child({variant!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def _memory_child(variant: str) -> float:
    import gc

    pin_threads()
    base, tok = load_classifier("minilm", 2)
    batch, labels = sst2_batch(tok)
    model, params = peft(base) if variant == "PEFT LoRA" else ours(
        base, "lora" if variant == "ours LoRA" else "bottleneck")
    del base
    gc.collect()
    return peak_rss_growth(make_step(model, params, batch, labels))


def loading(base, rounds: int, side=None) -> dict[str, float]:
    """Seconds to load the 1st adapter into a fresh model and the 32nd into one holding 31."""
    from peft import LoraConfig, PeftModel, get_peft_model

    tmp = Path(tempfile.mkdtemp())
    for i in range(32):
        m = copy.deepcopy(base)
        kit = ak.AdapterKit(m)
        kit.add("a", ak.LoRA(r=8, alpha=16))
        kit.save("a", tmp / f"ours{i}")
        get_peft_model(copy.deepcopy(base), LoraConfig(**PEFT_LORA)).save_pretrained(tmp / f"peft{i}")
    ours_m, peft_m = copy.deepcopy(base), copy.deepcopy(base)
    kit = ak.AdapterKit(ours_m)
    for i in range(31):
        kit.load(tmp / f"ours{i}", name=f"a{i}")
    pm = PeftModel.from_pretrained(peft_m, tmp / "peft0", adapter_name="a0")
    for i in range(1, 31):
        pm.load_adapter(tmp / f"peft{i}", adapter_name=f"a{i}")
    counter = {"ours": 0, "peft": 0}

    def ours_32nd() -> None:
        name = f"x{counter['ours']}"
        counter["ours"] += 1
        kit.load(tmp / "ours31", name=name)
        kit.remove(name)

    def peft_32nd() -> None:
        name = f"x{counter['peft']}"
        counter["peft"] += 1
        pm.load_adapter(tmp / "peft31", adapter_name=name)
        pm.delete_adapter(name)

    def ours_1st() -> None:
        ak.AdapterKit(copy.deepcopy(base)).load(tmp / "ours0")

    def peft_1st() -> None:
        PeftModel.from_pretrained(copy.deepcopy(base), tmp / "peft0")

    def copy_only() -> None:
        copy.deepcopy(base)

    cases = {"ours 32nd": ours_32nd, "PEFT 32nd": peft_32nd, "ours 1st": ours_1st,
             "PEFT 1st": peft_1st, "model copy": copy_only}
    cases.update(side.loading_cases() if side else {})
    med = interleaved(cases, rounds=rounds, warmup=1)
    # the 1st-adapter cases include a model copy; report them without it
    for k in ("ours 1st", "PEFT 1st"):
        med[k] = max(med[k] - med["model copy"], 0.0)
    del med["model copy"]
    return side.loading_medians(med) if side else med


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    ratios = results["ratios"]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(ratios) + 1.5))
    ax.barh(list(ratios), list(ratios.values()), color="#4477aa")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("ratio (see latest.md); 1.0 = parity, lower is better")
    ax.set_title("adapterkit vs PEFT (and vs adapters) on MiniLM (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def adapters_side(tok, threads: int):
    """The ``adapters`` worker, or None with the reason printed."""
    from adapters_side import AdaptersSide, find_python

    from adapterkit.train.models import model_dir

    python, info = find_python()
    if python is None:
        print(f"adapters (AdapterHub) comparison: skipped: {info}")
        return None
    batch, labels = sst2_batch(tok)
    side = AdaptersSide(python, model_dir("minilm"), batch, labels, threads)
    print(f"adapters (AdapterHub) comparison: {side.versions}")
    return side


def main() -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "15"))
    base, tok = load_classifier("minilm", 2)
    base.eval()
    print(f"threads {threads}, rounds {rounds}")
    side = adapters_side(tok, threads)
    train_s, counts = training(base, tok, rounds, side)
    memory = {k: side.memory(k) if k.startswith("adapters") else peak_memory(k) for k in train_s}
    load_s = loading(base, rounds, side)
    fwd_a = side.forward(base, sst2_batch(tok)[0], rounds) if side else {}
    if side is not None:
        side.close()
    fwd = subprocess.run([sys.executable, str(HERE / "overhead.py")], capture_output=True, text=True,
                         check=True, env={**os.environ, "BENCH_ROUNDS": str(2 * rounds)})
    overhead = json.loads((RESULTS / "overhead.json").read_text())
    r = overhead["ratios"]
    ratios = {
        "LoRA training step": train_s["ours LoRA"] / train_s["PEFT LoRA"],
        "LoRA training peak RSS growth": memory["ours LoRA"] / memory["PEFT LoRA"],
        "unmerged forward": r["ours/PEFT LoRA unmerged"],
        "unmerged forward (each vs own base)": r["ours/PEFT LoRA unmerged overhead"],
        "merged forward vs base": r["ours LoRA merged"],
        "load 32nd adapter": load_s["ours 32nd"] / load_s["PEFT 32nd"],
        "load 1st adapter": load_s["ours 1st"] / load_s["PEFT 1st"],
        "trainable params (LoRA)": counts["ours LoRA"] / counts["PEFT LoRA"],
    }
    if side is not None:
        ratios.update(adapters_ratios(train_s, memory, counts, load_s, fwd_a))
    results = {"machine": machine(), "rounds": rounds, "adapters": side.versions if side else None,
               "train_seconds": train_s, "peak_rss_growth_mib": memory, "trainable_params": counts,
               "load_seconds": load_s, "forward": overhead, "forward_vs_adapters": fwd_a,
               "ratios": ratios}
    report(results, fwd.stdout.strip().split("\n", 1)[-1])
    return 0


def report(results: dict, overhead_text: str) -> None:
    train_s, memory, counts = (results[k] for k in ("train_seconds", "peak_rss_growth_mib",
                                                      "trainable_params"))
    rows = [(k, f"{train_s[k] * 1000:.0f}", f"{memory[k]:.0f}", f"{counts[k]:,}") for k in train_s]
    md = ["## Training step (batch 32 x 64 tokens)",
          table(rows, ("variant", "median ms", "peak RSS growth MiB", "trainable params")),
          "", "## Adapter load time",
          table([(k, f"{v * 1000:.2f}") for k, v in results["load_seconds"].items()],
                ("case", "median ms")),
          "", "## Forward (bench/overhead.py)", overhead_text]
    if results["forward_vs_adapters"]:
        md += ["", "## Forward vs adapters (SST-2 batch 32 x 64)",
               table([(k, f"{v * 1000:.2f}") for k, v in results["forward_vs_adapters"].items()],
                     ("case", "median ms"))]
    md += ["", "## Ratios adapterkit / PEFT (and / adapters)",
           table([(k, f"{v:.3f}") for k, v in results["ratios"].items()], ("measure", "ratio"))]
    text = "\n".join(md)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(text + "\n")
    plot(results, RESULTS / "latest.png")


if __name__ == "__main__":
    sys.exit(main())
