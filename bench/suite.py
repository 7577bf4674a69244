"""The benchmark suite (``make bench``): adapterkit vs PEFT side by side on MiniLM / SST-2.

Measured in one run, interleaved where timed, threads pinned, medians:
- training step time (batch 32, length 64) for LoRA r=8 on q,v and for a bottleneck adapter;
- peak resident memory of those training steps, each in its own process;
- forward latency: base, unmerged, merged (bench/overhead.py);
- load time of the 1st and the 32nd adapter;
- trainable parameter counts for identical configs.
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
from common import RESULTS, interleaved, machine, pin_threads, table  # noqa: E402

import adapterkit as ak  # noqa: E402
from adapterkit.data import get_task  # noqa: E402
from adapterkit.hf import load_classifier  # noqa: E402

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
    kit.add("a", ak.LoRA(r=8, alpha=16) if method == "lora" else ak.Bottleneck(reduction=16))
    return m, kit.train("a", train_also=("classifier",))


def peft(base: torch.nn.Module) -> tuple[torch.nn.Module, list]:
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(copy.deepcopy(base), LoraConfig(**PEFT_LORA))
    return m, [p for p in m.parameters() if p.requires_grad]


def make_step(model, params, batch, labels):
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        loss = model(**batch, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def training(base, tok, rounds: int) -> tuple[dict[str, float], dict[str, int]]:
    batch, labels = sst2_batch(tok)
    variants = {"ours LoRA": ours(base, "lora"), "PEFT LoRA": peft(base),
                "ours Bottleneck": ours(base, "bottleneck")}
    counts = {k: sum(p.numel() for p in ps) for k, (_, ps) in variants.items()}
    steps = {k: make_step(m, ps, batch, labels) for k, (m, ps) in variants.items()}
    return interleaved(steps, rounds=rounds, warmup=2), counts


def peak_memory(variant: str) -> float:
    """Peak growth of resident memory (MiB) during 5 training steps of ``variant``, in a fresh
    process, over its resident memory once the model is built (loading peaks are left out)."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import suite;"
            f"print(suite._memory_child({variant!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_child(variant: str) -> float:
    import gc
    import threading

    pin_threads()
    base, tok = load_classifier("minilm", 2)
    batch, labels = sst2_batch(tok)
    model, params = peft(base) if variant == "PEFT LoRA" else ours(
        base, "lora" if variant == "ours LoRA" else "bottleneck")
    del base
    gc.collect()
    step = make_step(model, params, batch, labels)
    start, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            done.wait(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(5):
        step()
    done.set()
    sampler.join()
    return peak[0] - start


def loading(base, rounds: int) -> dict[str, float]:
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

    med = interleaved({"ours 32nd": ours_32nd, "PEFT 32nd": peft_32nd, "ours 1st": ours_1st,
                       "PEFT 1st": peft_1st, "model copy": copy_only}, rounds=rounds, warmup=1)
    # the 1st-adapter cases include a model copy; report them without it
    for k in ("ours 1st", "PEFT 1st"):
        med[k] = max(med[k] - med["model copy"], 0.0)
    del med["model copy"]
    return med


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    ratios = results["ratios"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(list(ratios), list(ratios.values()), color="#4477aa")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("ratio (see latest.md); 1.0 = parity, lower is better")
    ax.set_title("adapterkit vs PEFT on MiniLM (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    threads = pin_threads()
    rounds = int(os.environ.get("BENCH_ROUNDS", "15"))
    base, tok = load_classifier("minilm", 2)
    base.eval()
    print(f"threads {threads}, rounds {rounds}")
    print("adapters (AdapterHub) comparison: skipped: it needs its own virtual environment "
          "(the library pins an older transformers) and the side runner is not written yet")
    train_s, counts = training(base, tok, rounds)
    memory = {k: peak_memory(k) for k in train_s}
    load_s = loading(base, rounds)
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
    rows = [(k, f"{train_s[k] * 1000:.0f}", f"{memory[k]:.0f}", f"{counts[k]:,}") for k in train_s]
    md = ["## Training step (batch 32 x 64 tokens)",
          table(rows, ("variant", "median ms", "peak RSS growth MiB", "trainable params")),
          "", "## Adapter load time",
          table([(k, f"{v * 1000:.2f}") for k, v in load_s.items()], ("case", "median ms")),
          "", "## Forward (bench/overhead.py)", fwd.stdout.strip().split("\n", 1)[-1],
          "", "## Ratios adapterkit / PEFT",
          table([(k, f"{v:.3f}") for k, v in ratios.items()], ("measure", "ratio"))]
    text = "\n".join(md)
    print(text)
    results = {"machine": machine(), "rounds": rounds, "train_seconds": train_s,
               "peak_rss_growth_mib": memory, "trainable_params": counts, "load_seconds": load_s,
               "forward": overhead, "ratios": ratios}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(text + "\n")
    plot(results, RESULTS / "latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
