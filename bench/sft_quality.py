"""SmolLM2 + LoRA SFT on SST-2 and MRPC cast as instructions, graded by exact match of the
generated label on the whole dev split: the untrained model, adapterkit's LoRA and PEFT's LoRA
under the same config, data order, optimizer and step budget.

    python bench/sft_quality.py          # writes bench/results/sft_quality.{json,md} and the
                                         # table in docs/training.md between its markers
    SFT_STEPS=150 SFT_BATCH=8 SFT_TRAIN=2000   # the budget (defaults)

LoRA r=16, alpha 32, every linear layer of the decoder (PEFT: ``target_modules="all-linear"``,
which leaves out the LM head, as adapterkit's ``all-linear`` role does), AdamW lr 1e-3 with the
warmup and cosine schedule of ``adapterkit.train.loop.fit``, seed 0. Reads the GLUE files from
``../shared/data/glue`` (or ``$ADAPTERKIT_GLUE``).
"""

from __future__ import annotations

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
               samples=acc["samples"])
    print(f"{task} {row['library']}: exact match {acc['exact_match']:.4f}", flush=True)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    by = {(r["task"], r["library"]): r for r in rows}
    lines = []
    for task in TASKS:
        base, ours, peft = (by[(task, k)] for k in ("untrained", "adapterkit", "peft"))
        lines.append((task, str(base["dev"]), f"{100 * base['exact_match']:.1f}",
                      f"{100 * ours['exact_match']:.1f}", f"{100 * peft['exact_match']:.1f}",
                      f"{100 * (ours['exact_match'] - peft['exact_match']):+.1f}"))
    head = ("task", "dev examples", "untrained", "adapterkit LoRA", "PEFT LoRA", "ours - PEFT")
    return (table(lines, head) + f"\n\nBudget: {STEPS} steps of batch {BATCH}, the first {TRAIN} "
            "shuffled training examples, LoRA r=16 alpha 32 on every linear layer, AdamW lr 1e-3, "
            "seed 0; exact match (%) of the greedy answer on "
            + ("the whole dev split" if DEV is None else f"the first {DEV} dev examples")
            + ".\n")


def main() -> None:
    pin_threads()
    rows = [run(task, lib) for task in TASKS for lib in (None, "adapterkit", "peft")]
    md = markdown(rows)
    write("sft_quality", {"steps": STEPS, "batch": BATCH, "train": TRAIN, "rows": rows})
    (HERE / "results" / "sft_quality.md").write_text(md)
    text = DOC.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    DOC.write_text(pattern.sub(lambda _: f"{START}\n{md}{END}", text))
    print(md)


if __name__ == "__main__":
    main()
