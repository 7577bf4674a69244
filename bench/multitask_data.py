"""Plumbing of the multi-task benchmark (bench/multitask.py): the four GLUE tasks, MiniLM with
one head per task on mean-pooled states, mixed batches, training and evaluation."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import adapterkit as ak
from adapterkit.train.data import glue_dir
from adapterkit.train.datasets import Table, TableExample, glue_table
from adapterkit.train.loop import TrainArgs, fit
from adapterkit.train.metrics import compute

TASKS = ("sst2", "rte", "mrpc", "stsb")
#: each task's score: the mean of its GLUE metrics, x 100
METRICS = {"sst2": ("accuracy",), "rte": ("accuracy",), "mrpc": ("accuracy", "f1"),
           "stsb": ("pearson", "spearman")}


@dataclass(frozen=True)
class Budget:
    steps_per_task: int = 60
    batch: int = 16
    max_length: int = 64
    lr: float = 2e-3
    fusion_lr: float = 1e-3
    #: Hyperformer's learning rate for the hypernetwork (its heads train at ``lr``): Adam moves
    #: each generated weight by up to ``task_dim`` times the step of a LoRA weight, and at
    #: ``lr`` the HyperAdapter does not learn here (SST-2 at chance)
    hyper_lr: float = 3e-4

    @property
    def tag(self) -> str:
        """Names the cache folder of this budget."""
        return (f"s{self.steps_per_task}-b{self.batch}-l{self.max_length}-lr{self.lr:g}"
                f"-f{self.fusion_lr:g}-zstsb")

    @property
    def mixed_steps(self) -> int:
        """Multi-task runs see as many examples of each task as a single-task run."""
        return self.steps_per_task * len(TASKS)


def load_tasks(dev_limit: int | None = None) -> dict[str, Table]:
    """The four tasks, whole (``dev_limit``: the first dev examples only, for quick checks).
    STS-B's training targets are standardised (mean 0, variance 1 over its training set), so
    that its squared error weighs like the classification losses in mixed batches; Pearson and
    Spearman on dev do not change under that affine map."""
    root = glue_dir()
    tasks = {t: glue_table(t, root, limit=dev_limit) for t in TASKS}
    stsb = tasks["stsb"]
    values = torch.tensor([float(ex.label) for ex in stsb.train])
    mean, std = float(values.mean()), float(values.std())
    tasks["stsb"] = replace(stsb, train=[TableExample(ex.texts, (float(ex.label) - mean) / std)
                                         for ex in stsb.train])
    return tasks


class MultiTask(nn.Module):
    """The encoder (where the kit lives) plus one linear head per task on the masked mean of
    the last hidden states; ``forward`` returns the mean over rows of each row's task loss
    (cross-entropy, or the squared error on the standardised STS-B score)."""

    def __init__(self, encoder: nn.Module, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        width = encoder.config.hidden_size
        torch.manual_seed(seed)
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1 if t == "stsb" else 2) for t in TASKS})
        self.kit = ak.AdapterKit(encoder)
        self.with_ids = False  # run the forward inside kit.tasks(rows)

    def pooled(self, enc: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        if self.with_ids:
            with self.kit.tasks(rows):
                hidden = self.encoder(**enc).last_hidden_state
        else:
            hidden = self.encoder(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, rows: torch.Tensor, labels: torch.Tensor, **enc: torch.Tensor) -> Any:
        z = self.pooled(enc, rows)
        losses = []
        for i, task in enumerate(TASKS):
            idx = (rows == i).nonzero().squeeze(1)
            if not idx.numel():
                continue
            out = self.heads[task](z.index_select(0, idx))
            y = labels.index_select(0, idx)
            losses.append(nn.functional.mse_loss(out[:, 0], y, reduction="sum") if task == "stsb"
                          else nn.functional.cross_entropy(out, y.long(), reduction="sum"))
        return SimpleNamespace(loss=torch.stack(losses).sum() / rows.shape[0])


def collate(tokenizer: Any, groups: Sequence[tuple[int, Sequence[Any]]],
            max_length: int) -> dict[str, torch.Tensor]:
    """One batch from (task index, examples) groups: each tokenised on its own (single
    sentences and pairs), padded to one length and concatenated."""
    parts, rows, labels = [], [], []
    for i, exs in groups:
        cols = list(zip(*(ex.texts for ex in exs)))
        parts.append(tokenizer(*cols, padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt"))
        rows += [i] * len(exs)
        labels += [float(ex.label) for ex in exs]
    length = max(p["input_ids"].shape[1] for p in parts)
    out = {k: torch.cat([nn.functional.pad(p[k], (0, length - p[k].shape[1])) for p in parts])
           for k in parts[0]}
    return {**out, "rows": torch.tensor(rows), "labels": torch.tensor(labels)}


def batches(tokenizer: Any, data: dict[str, Table], tasks: Sequence[str], budget: Budget,
            seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of ``budget.batch`` examples, split evenly over ``tasks``."""
    rng = random.Random(seed)
    per = budget.batch // len(tasks)
    orders = {t: list(range(len(data[t].train))) for t in tasks}
    pos = {t: len(orders[t]) for t in tasks}
    while True:
        groups = []
        for t in tasks:
            if pos[t] + per > len(orders[t]):
                rng.shuffle(orders[t])
                pos[t] = 0
            groups.append((TASKS.index(t), [data[t].train[j]
                                            for j in orders[t][pos[t]:pos[t] + per]]))
            pos[t] += per
        yield collate(tokenizer, groups, budget.max_length)


def train(model: MultiTask, params: list[nn.Parameter], tokenizer: Any, data: dict[str, Table],
          tasks: Sequence[str], steps: int, lr: float, budget: Budget, seed: int) -> float:
    """AdamW with warmup and cosine decay (``adapterkit.train.loop.fit``); returns seconds."""
    args = TrainArgs(steps=steps, batch_size=budget.batch, max_length=budget.max_length, lr=lr,
                     seed=seed, progress=False)
    return fit(model, params, batches(tokenizer, data, tasks, budget, seed), args).seconds


@torch.no_grad()
def evaluate(model: MultiTask, tokenizer: Any, data: dict[str, Table], task: str,
             budget: Budget) -> dict[str, float]:
    """The task's GLUE metrics on its whole dev set (x 100) and ``score``, their mean."""
    model.eval()
    dev = data[task].dev
    order = sorted(range(len(dev)), key=lambda j: sum(len(t) for t in dev[j].texts))
    preds: list[float] = [0.0] * len(dev)
    i = TASKS.index(task)
    for start in range(0, len(order), 128):
        chunk = order[start:start + 128]
        batch = collate(tokenizer, [(i, [dev[j] for j in chunk])], budget.max_length)
        rows = batch.pop("rows")
        batch.pop("labels")
        out = model.heads[task](model.pooled(batch, rows))
        values = out[:, 0].tolist() if task == "stsb" else out.argmax(-1).tolist()
        for j, v in zip(chunk, values):
            preds[j] = v
    gold = [ex.label for ex in dev]
    scores = {k: 100.0 * v for k, v in compute(METRICS[task], preds, gold).items()}
    return {**scores, "score": sum(scores.values()) / len(scores)}
