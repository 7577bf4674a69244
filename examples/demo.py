"""End-to-end demo: LoRA on the packaged MiniLM for SST-2.

Trains, evaluates, saves, reloads into a fresh model (checking the predictions are identical),
merges (checking again) and prints accuracy and timings. Run with ``make demo``.
Environment: DEMO_STEPS (default 400), DEMO_OUT (default runs/demo), ADAPTERKIT_GLUE.
SST-2 comes from ``$ADAPTERKIT_GLUE`` or ``../shared/data/glue`` when there is one, else from the
slice shipped in the package (``adapterkit/train/glue_data/``); the first lines name the files.
"""

from __future__ import annotations

import os
import sys
import time

import torch

import adapterkit as ak
from adapterkit.train.data import get_task
from adapterkit.train.loop import TrainArgs, accuracy, predict, train_adapter
from adapterkit.train.models import load_classifier


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    steps = int(os.environ.get("DEMO_STEPS", "400"))
    out_dir = os.environ.get("DEMO_OUT", "runs/demo")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    task = get_task("sst2")
    train, dev = task.split("train"), task.split("dev")
    kind = ("the slice of GLUE's train split shipped with adapterkit, "
            f"see {task.directory.parent / 'README.md'}" if task.shipped
            else "the full GLUE train split")
    print(f"SST-2 train: {len(train):,} rows from {task.path('train')} ({kind})")
    print(f"SST-2 dev: {len(dev):,} rows from {task.path('dev')}")
    print("model: all-MiniLM-L6-v2 (packaged)")

    model, tok = load_classifier("minilm", num_labels=2, seed=0)
    kit = ak.AdapterKit(model)
    kit.add("sst2", ak.LoRA(r=8, alpha=16, targets=("attn.q", "attn.v")))
    print(kit.summary())

    result = train_adapter(kit, "sst2", tok, train, TrainArgs(steps=steps, lr=2e-3))
    preds, eval_s = timed(predict, model, tok, dev)
    acc = accuracy(preds, dev)
    kit.save("sst2", out_dir)
    print(f"trained {steps} steps in {result.seconds:.1f}s ({result.seconds_per_step:.3f} s/step)")
    print(f"dev accuracy {acc:.4f}; eval {eval_s:.1f}s; saved to {out_dir}")

    fresh, _ = load_classifier("minilm", num_labels=2, seed=123)  # a different random head
    kit2 = ak.AdapterKit(fresh)
    (name, load_s) = timed(kit2.load, out_dir)
    kit2.activate(name)
    reloaded, _ = timed(predict, fresh, tok, dev)
    same_reload = reloaded == preds
    print(f"reloaded {name!r} into a fresh model in {load_s * 1000:.1f} ms; "
          f"predictions identical: {same_reload}")

    kit2.merge(name)
    merged, merged_s = timed(predict, fresh, tok, dev)
    same_merged = merged == preds
    print(f"merged: predictions identical: {same_merged}; eval {merged_s:.1f}s "
          f"(unmerged {eval_s:.1f}s); accuracy {accuracy(merged, dev):.4f}")
    print(kit2.summary())
    if not (same_reload and same_merged):
        print("FAILED: predictions changed across save/load or merge", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
