"""SST-2 dev accuracy of every method on MiniLM with one step budget, through the CLI.

    python bench/methods_table.py            # train what is missing, then write the table
    python bench/methods_table.py --force    # retrain everything
    METHODS_STEPS=200 METHODS_BATCH=16       # the budget (defaults)

Each row runs ``adapterkit train --config JSON`` (AdamW, cosine schedule, batch 16, length 64,
seed 0; the classifier head trains with every adapter) into runs/methods/<row>, reads the
accuracy and parameter counts the CLI records in the adapter's config, evaluates DyLoRA again at
every rank, and writes bench/results/methods.{json,md} and the table in docs/methods.md between
its markers. Learning rates are per method (the usual ranges for each), never tuned on dev.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import write  # noqa: E402

RUNS = ROOT / "runs" / "methods"
DOC = ROOT / "docs" / "methods.md"
START, END = "<!-- sst2-table:start -->", "<!-- sst2-table:end -->"
STEPS = int(os.environ.get("METHODS_STEPS", "200"))
BATCH = int(os.environ.get("METHODS_BATCH", "16"))

#: row id -> (config JSON, learning rate)
ROWS: dict[str, tuple[dict[str, Any], float]] = {
    "lora r=8 q,v": ({"method": "lora", "r": 8, "alpha": 16}, 2e-3),
    "lora pissa r=8 q,v": ({"method": "lora", "r": 8, "alpha": 16, "init": "pissa"}, 2e-3),
    "rslora r=8 q,v": ({"method": "lora", "r": 8, "alpha": 16, "use_rslora": True}, 2e-3),
    "dylora r<=8 q,v": ({"method": "dylora", "r": 8, "alpha": 16}, 2e-3),
    "dora r=8 q,v": ({"method": "dora", "r": 8, "alpha": 16}, 2e-3),
    "vera r=256 q,v": ({"method": "vera", "r": 256}, 1e-2),
    "hydra r=8 attn.out,ffn.out": ({"method": "hydra", "r": 8, "alpha": 16}, 2e-3),
    "shira 1% q,v": ({"method": "shira", "fraction": 0.01}, 2e-3),
    "ia3": ({"method": "ia3"}, 5e-3),
    "bottleneck pfeiffer (ffn)": ({"method": "bottleneck", "reduction": 16}, 1e-3),
    "sparse adapter 50% snip": ({"method": "sparse_adapter", "reduction": 16,
                                 "sparsity": 0.5}, 1e-3),
    "compacter++": ({"method": "compacter", "reduction": 16, "plus_plus": True}, 3e-3),
    "adapterbias": ({"method": "adapterbias"}, 3e-3),
    "invertible (nice)": ({"method": "invertible"}, 1e-3),
    "prompt tuning 20": ({"method": "prompt", "num_tokens": 20}, 3e-2),
    "prefix tuning 20": ({"method": "prefix", "num_tokens": 20}, 1e-2),
    "MAM (prefix + parallel)": ("MAM", 1e-3),
    "UniPELT (gated)": ("UniPELT", 1e-3),
}
#: methods that need other trained adapters first, and where their numbers are
ELSEWHERE = {
    "eigenlora": "trains coefficients on a basis of other adapters: docs/operations.md (d)",
    "fusion": "fuses trained adapters: the MAD-X example, docs/composition.md",
}


def _config(value: dict[str, Any] | str) -> dict[str, Any]:
    """A preset (``MAM``, ``UniPELT``) as its JSON, else the JSON itself."""
    if isinstance(value, dict):
        return value
    import adapterkit as ak
    from adapterkit.methods.configs import config_to_dict

    return config_to_dict(getattr(ak, value)())


def _slug(row: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")


def train(row: str, force: bool) -> dict[str, Any]:
    config, lr = ROWS[row]
    out = RUNS / _slug(row)
    meta = out / "adapter_config.json"
    want = {"steps": STEPS, "batch_size": BATCH, "lr": lr}
    if not force and meta.is_file():
        training = json.loads(meta.read_text()).get("training", {})
        if all(training.get(k) == v for k, v in want.items()):
            return training
    cmd = [sys.executable, "-m", "adapterkit.cli", "train", "--config", json.dumps(_config(config)),
           "--steps", str(STEPS), "--batch-size", str(BATCH), "--lr", str(lr), "--out", str(out)]
    print("$", " ".join(cmd[1:4]), f"'{cmd[5]}'", " ".join(cmd[6:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(meta.read_text())["training"]


def dylora_ranks(directory: Path, ranks: tuple[int, ...] = (1, 2, 4, 8)) -> dict[int, float]:
    """Dev accuracy of one trained DyLoRA adapter evaluated at each rank."""
    import adapterkit as ak
    from adapterkit.train.data import get_task
    from adapterkit.train.loop import accuracy, predict
    from adapterkit.train.models import load_classifier

    task = get_task("sst2")
    dev = task.split("dev")
    model, tok = load_classifier("minilm", len(task.labels), seed=12345)
    kit = ak.AdapterKit(model)
    name = kit.load(directory)
    kit.activate(name)
    out = {}
    for r in ranks:
        ak.set_dylora_rank(kit, name, r)
        out[r] = accuracy(predict(model, tok, dev), dev)
    return out


def table(results: dict[str, dict[str, Any]], ranks: dict[int, float]) -> str:
    lines = [f"SST-2 dev accuracy (872 examples), MiniLM (all-MiniLM-L6-v2), {STEPS} steps of "
             f"batch {BATCH}, length 64, seed 0; the 770-parameter classifier head trains with "
             "every adapter. Made by `python bench/methods_table.py`.", "",
             "| method | config | lr | dev accuracy | adapter params | % of base |",
             "|---|---|---|---|---|---|"]
    for row, t in results.items():
        config, lr = ROWS[row]
        shown = config if isinstance(config, str) else json.dumps(config, separators=(",", ":"))
        pct = 100 * t["adapter_params"] / t["base_params"]
        lines.append(f"| {row} | `{shown}` | {lr:g} | {100 * t['dev_accuracy']:.2f} | "
                     f"{t['adapter_params']:,} | {pct:.3f} |")
    lines += ["", "DyLoRA, the one adapter above evaluated at each rank: "
              + ", ".join(f"r={r}: {100 * a:.2f}" for r, a in ranks.items()), ""]
    lines += [f"- `{m}`: {why}" for m, why in ELSEWHERE.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="retrain every row")
    parser.add_argument("--only", nargs="*", help="row ids to (re)train and show")
    args = parser.parse_args()
    rows = args.only or list(ROWS)
    results = {row: train(row, args.force) for row in rows}
    ranks = dylora_ranks(RUNS / _slug("dylora r<=8 q,v")) if "dylora r<=8 q,v" in rows else {}
    text = table(results, ranks)
    print(text)
    write("methods", {"steps": STEPS, "batch_size": BATCH, "rows": results,
                      "dylora_ranks": ranks})
    (HERE / "results" / "methods.md").write_text(text + "\n")
    if args.only is None:
        doc = DOC.read_text()
        if START in doc and END in doc:
            head, rest = doc.split(START, 1)
            DOC.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
