"""A plain training and evaluation loop for sequence classification with one adapter."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.progress import progress
from ..kit import AdapterKit
from .data import Example


@dataclass
class TrainArgs:
    steps: int = 400
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-3
    warmup: float = 0.06
    weight_decay: float = 0.0
    seed: int = 0
    eval_batch_size: int = 128
    progress: bool = True


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


def encode(tokenizer: Any, batch: Sequence[Example], max_length: int) -> dict[str, torch.Tensor]:
    columns = list(zip(*(ex.texts for ex in batch)))
    return tokenizer(*columns, padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")


def _batches(data: Sequence[Example], size: int, seed: int) -> Iterator[list[Example]]:
    rng = random.Random(seed)
    order = list(range(len(data)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield [data[j] for j in order[i:i + size]]


def _schedule(step: int, total: int, warmup: float) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w))))


def classification_batches(tokenizer: Any, data: Sequence[Example],
                           args: TrainArgs) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled training batches of ``data``: tokenised texts plus ``labels``, without end."""
    for batch in _batches(data, args.batch_size, args.seed):
        enc = encode(tokenizer, batch, args.max_length)
        yield {**enc, "labels": torch.tensor([ex.label for ex in batch])}


def fit(model: Any, params: Sequence[torch.nn.Parameter], batches: Iterator[dict[str, Any]],
        args: TrainArgs, desc: str = "train") -> TrainResult:
    """``args.steps`` AdamW steps on ``params`` with a warmup and cosine schedule, one batch of
    ``batches`` (keyword arguments of ``model`` holding the labels) per step; the model is in
    eval mode afterwards."""
    torch.manual_seed(args.seed)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, args.steps, args.warmup))
    model.train()
    result = TrainResult()
    start = time.perf_counter()
    bar = progress(zip(range(args.steps), batches), args.steps, desc, args.progress)
    for step, batch in bar:
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        result.losses.append(loss.item())
        if hasattr(bar, "set_postfix") and step % 10 == 0:
            bar.set_postfix(loss=f"{sum(result.losses[-20:]) / len(result.losses[-20:]):.3f}")
    result.seconds = time.perf_counter() - start
    result.steps = args.steps
    model.eval()
    return result


def train_adapter(kit: AdapterKit, name: str, tokenizer: Any, data: Sequence[Example],
                  args: TrainArgs, train_also: Sequence[str] = ("classifier",),
                  setup: Any = None) -> TrainResult:
    """Train adapter ``name`` (and ``train_also`` heads) with AdamW and a cosine schedule.
    ``setup``, a composition holding ``name`` (``Stack("lang", name)``), runs in the forward
    instead of ``name`` alone; its other adapters stay frozen."""
    torch.manual_seed(args.seed)
    params = kit.train(name, train_also=train_also)
    if setup is not None:
        kit.activate(setup)
    return fit(kit.model, params, classification_batches(tokenizer, data, args), args,
               f"train {name}")


@torch.no_grad()
def predict(model: Any, tokenizer: Any, data: Sequence[Example], max_length: int = 64,
            batch_size: int = 128, show: bool = False) -> list[int]:
    """Predicted labels, in the order of ``data`` (batches are formed by length for speed)."""
    model.eval()
    order = sorted(range(len(data)), key=lambda i: sum(len(t) for t in data[i].texts))
    preds = [0] * len(data)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in progress(chunks, len(chunks), "eval", show):
        enc = encode(tokenizer, [data[i] for i in chunk], max_length)
        for i, p in zip(chunk, model(**enc).logits.argmax(-1).tolist()):
            preds[i] = p
    return preds


def accuracy(preds: Sequence[int], data: Sequence[Example]) -> float:
    return sum(int(p == ex.label) for p, ex in zip(preds, data)) / max(len(data), 1)


@torch.no_grad()
def predict_values(model: Any, tokenizer: Any, data: Sequence[Any], max_length: int = 64,
                   batch_size: int = 128, show: bool = False) -> list[float]:
    """Predicted regression targets (the single output of a ``num_labels=1`` head)."""
    model.eval()
    out: list[float] = []
    chunks = [data[i:i + batch_size] for i in range(0, len(data), batch_size)]
    for chunk in progress(chunks, len(chunks), "eval", show):
        out.extend(model(**encode(tokenizer, chunk, max_length)).logits[:, 0].float().tolist())
    return out
