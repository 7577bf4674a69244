"""HyperAdapter learning rates on MiniLM and SST-2: 60 steps of batch 16 at Hyperformer's 3e-4
and at LoRA's 2e-3 (task and layer dim 32, LoRA r=8), scored on the first 200 dev examples.

    python bench/hyper_lr.py        # about 3 minutes on two quiet CPU cores
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_threads
from multitask_data import Budget, MultiTask, batches, evaluate, load_tasks
from transformers import AutoModel, AutoTokenizer

import adapterkit as ak
from adapterkit.train.loop import TrainArgs, fit
from adapterkit.train.models import model_dir


def main() -> int:
    pin_threads()
    data, budget = load_tasks(200), Budget()
    tok = AutoTokenizer.from_pretrained(model_dir("minilm"))
    for lr in (3e-4, 2e-3):
        torch.manual_seed(0)
        model = MultiTask(AutoModel.from_pretrained(model_dir("minilm")), 0)
        model.kit.add("h", ak.HyperAdapter(n_tasks=1, task_dim=32, hidden=64, r=8, alpha=16))
        params = model.kit.train("h") + list(model.heads["sst2"].parameters())
        args = TrainArgs(steps=60, batch_size=16, max_length=64, lr=lr, seed=0, progress=False)
        losses = fit(model, params, batches(tok, data, ("sst2",), budget, 0), args).losses
        score = evaluate(model, tok, data, "sst2", budget)["score"]
        print(f"lr {lr:g}: loss over steps 1-10 {sum(losses[:10]) / 10:.3f}, 51-60 "
              f"{sum(losses[-10:]) / 10:.3f}; SST-2 accuracy on 200 dev examples {score:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
