"""SmolLM2 + LoRA SFT on SST-2 and MRPC cast as instructions, graded by exact match of the
generated label on the whole dev split: the untrained model, adapterkit's LoRA and PEFT's LoRA
under the same config, data order, optimizer and step budget.

    python bench/sft_quality.py          # writes bench/results/sft_quality.{json,md} and the
                                         # table in docs/training.md between its markers
    SFT_STEPS=150 SFT_BATCH=8 SFT_TRAIN=2000   # the budget (defaults)
    SFT_DEV=256                          # grade the first 256 dev examples, not the whole split
    SFT_TASKS=mrpc SFT_LIBS=peft         # run some rows only (say, one process per row)

Each row (task x untrained/adapterkit/peft) goes to bench/results/sft_quality_<task>_<lib>.json
with the budget it ran at; the table is built once every row's file is there, so rows run in
separate processes, under the same load at the same time, meet in one table (adapterkit and
PEFT must have run at the same budget on the same dev examples).

LoRA r=16, alpha 32, every linear layer of the decoder (PEFT: ``target_modules="all-linear"``,
which leaves out the LM head, as adapterkit's ``all-linear`` role does), AdamW lr 1e-3 with the
warmup and cosine schedule of ``adapterkit.train.loop.fit``, seed 0. Reads the GLUE files from
``../shared/data/glue`` (or ``$ADAPTERKIT_GLUE``).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from common import pin_threads, table, write  # noqa: E402

import adapterkit as ak  # noqa: E402
from adapterkit.train.data import glue_dir  # noqa: E402
from adapterkit.train.datasets import glue_table  # noqa: E402
from adapterkit.train.evaluate import answer_accuracy  # noqa: E402
from adapterkit.train.loop import TrainArgs, fit  # noqa: E402
from adapterkit.train.models import load_causal_lm  # noqa: E402
from adapterkit.train.sft import sft_batches, tokenize  # noqa: E402

STEPS = int(os.environ.get("SFT_STEPS", "150"))
BATCH = int(os.environ.get("SFT_BATCH", "8"))
TRAIN = int(os.environ.get("SFT_TRAIN", "2000"))
DEV = int(os.environ["SFT_DEV"]) if os.environ.get("SFT_DEV") else None  # a smoke-test cap
MAX_LENGTH = 160
DOC = ROOT / "docs" / "training.md"
START, END = "<!-- sft-quality:start -->", "<!-- sft-quality:end -->"


def sst2(texts: tuple[str, ...], label: int) -> dict[str, str]:
    return {"prompt": f"Is this review positive or negative?\nReview: {texts[0]}\n"
                      "Answer with one word: positive or negative.",
            "completion": ("negative", "positive")[label]}


def mrpc(texts: tuple[str, ...], label: int) -> dict[str, str]:
    return {"prompt": "Do these two sentences mean the same thing?\n"
                      f"Sentence 1: {texts[0]}\nSentence 2: {texts[1]}\nAnswer yes or no.",
            "completion": ("no", "yes")[label]}


TASKS = {"sst2": sst2, "mrpc": mrpc}


def records(task: str, tok: Any) -> tuple[list[Any], list[Any]]:
    table_ = glue_table(task, glue_dir())
    train = list(table_.train)
    random.Random(0).shuffle(train)
    cast = TASKS[task]
    enc = [tokenize(tok, cast(e.texts, e.label), "prompt-completion", MAX_LENGTH, "left")
           for e in train[:TRAIN]]
    dev = [tokenize(tok, cast(e.texts, e.label), "prompt-completion", MAX_LENGTH, "left")
           for e in table_.dev[:DEV]]
    return enc, dev


def lora_ours(model: Any) -> tuple[Any, list[Any]]:
    kit = ak.AdapterKit(model)
    kit.add("sft", ak.LoRA(r=16, alpha=32, targets=("all-linear",)))
    return model, kit.train("sft")


def lora_peft(model: Any) -> tuple[Any, list[Any]]:
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                            lora_dropout=0.0))
    return peft, [p for p in peft.parameters() if p.requires_grad]


def run(task: str, library: str | None) -> dict[str, Any]:
    model, tok = load_causal_lm("smollm2")
    train, dev = records(task, tok)
    row: dict[str, Any] = {"task": task, "library": library or "untrained", "dev": len(dev)}
    if library is not None:
        torch.manual_seed(0)
        model, params = (lora_ours if library == "adapterkit" else lora_peft)(model)
        args = TrainArgs(steps=STEPS, batch_size=BATCH, lr=1e-3, seed=0, progress=False)
        result = fit(model, params, sft_batches(train, BATCH, 0, tok.pad_token_id), args)
        row.update(train_seconds=result.seconds, final_loss=sum(result.losses[-10:]) / 10,
                   trainable=sum(p.numel() for p in params))
    t0 = time.perf_counter()
    acc = answer_accuracy(model, tok, dev, batch_size=32, limit=None)
    row.update(exact_match=acc["exact_match"], eval_seconds=time.perf_counter() - t0,
               samples=acc["samples"], load_1min=os.getloadavg()[0])
    print(f"{task} {row['library']}: exact match {acc['exact_match']:.4f}", flush=True)
    return row


def majority(task: str, dev: int | None) -> float:
    """The share of the graded dev examples that carry the most common label."""
    labels = [e.label for e in glue_table(task, glue_dir()).dev[:dev]]
    return max(labels.count(v) for v in set(labels)) / len(labels)


LIBRARIES = ("untrained", "adapterkit", "peft")


def budget(r: dict[str, Any]) -> str:
    used = min(r["steps"] * r["batch"], r["train"])
    return f"{r['steps']} steps of batch {r['batch']} ({used} training examples)"


def markdown(runs: dict[tuple[str, str], dict[str, Any]]) -> str:
    lines = []
    for task in TASKS:
        base, ours, peft = (runs[(task, lib)] for lib in LIBRARIES)
        if budget(ours) != budget(peft) or not base["dev"] == ours["dev"] == peft["dev"]:
            raise SystemExit(f"{task}: adapterkit and PEFT ran at different budgets or dev sets")
        em = [100 * r["row"]["exact_match"] for r in (base, ours, peft)]
        lines.append((task, budget(ours), str(ours["dev"]), f"{100 * ours['majority']:.1f}",
                      f"{em[0]:.1f}", f"{em[1]:.1f}", f"{em[2]:.1f}", f"{em[1] - em[2]:+.1f}"))
    head = ("task", "budget", "dev examples", "majority label", "untrained", "adapterkit LoRA",
            "PEFT LoRA", "ours - PEFT")
    return (table(lines, head) + "\n\nLoRA r=16 alpha 32 on every linear layer, AdamW lr 1e-3 "
            "(warmup and cosine), seed 0, the same shuffled training examples in the same order "
            "for both libraries; exact match (%) of the greedy answer on the first dev examples "
            "(the whole split where the count equals it: SST-2 872, MRPC 408).\n")


def result_path(task: str, library: str) -> Path:
    return HERE / "results" / f"sft_quality_{task}_{library}.json"


def main() -> None:
    pin_threads()
    tasks = os.environ.get("SFT_TASKS", ",".join(TASKS)).split(",")
    libraries = os.environ.get("SFT_LIBS", ",".join(LIBRARIES)).split(",")
    for task in tasks:
        for lib in libraries:
            row = run(task, None if lib == "untrained" else lib)
            write(result_path(task, lib).stem, {
                "steps": STEPS, "batch": BATCH, "train": TRAIN, "dev": row["dev"],
                "majority": majority(task, DEV), "row": row})
    runs = {(t, lib): json.loads(result_path(t, lib).read_text())
            for t in TASKS for lib in LIBRARIES if result_path(t, lib).is_file()}
    missing = [f"{t} {lib}" for t in TASKS for lib in LIBRARIES if (t, lib) not in runs]
    if missing:
        print(f"rows without results yet: {missing}; table not written")
        return
    md = markdown(runs)
    (HERE / "results" / "sft_quality.md").write_text(md)
    text = DOC.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    DOC.write_text(pattern.sub(lambda _: f"{START}\n{md}{END}", text))
    print(md)


if __name__ == "__main__":
    main()
