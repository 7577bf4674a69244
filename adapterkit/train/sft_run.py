"""One SFT run of an adapter on a causal LM: held-out loss before and after, AdamW with the
loop of :mod:`.loop`, answer accuracy and sample generations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..kit import AdapterKit
from .evaluate import answer_accuracy, heldout_loss
from .loop import TrainArgs, TrainResult, fit
from .sft import SFTExample, sft_batches


@dataclass
class SFTReport:
    before: dict[str, float]
    after: dict[str, float]
    accuracy: dict[str, Any]
    result: TrainResult

    def summary(self) -> dict[str, Any]:
        return {"heldout_loss_before": self.before["loss"], "heldout_loss": self.after["loss"],
                "perplexity_before": self.before["perplexity"],
                "perplexity": self.after["perplexity"], "heldout_tokens": self.after["tokens"],
                "exact_match": self.accuracy["exact_match"], "graded": self.accuracy["graded"],
                "seconds": self.result.seconds, "final_loss": self.result.losses[-1]}


def train_sft(kit: AdapterKit, name: str, tokenizer: Any, train: Sequence[SFTExample],
              dev: Sequence[SFTExample], args: TrainArgs, generate_limit: int | None = 64,
              autocast: torch.dtype | None = None) -> SFTReport:
    """Train adapter ``name`` on ``train`` for ``args.steps`` steps and evaluate on ``dev``;
    ``autocast`` runs training and evaluation under ``torch.autocast("cpu", autocast)``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = kit.model
    ctx: Callable[[], Any] = ((lambda: torch.autocast("cpu", autocast)) if autocast is not None
                              else contextlib.nullcontext)
    kit.activate(name)
    with ctx():
        before = heldout_loss(model, dev, pad, args.eval_batch_size)
    torch.manual_seed(args.seed)
    params = kit.train(name)
    with ctx():
        result = fit(model, params, sft_batches(train, args.batch_size, args.seed, pad), args,
                     f"train {name}")
        after = heldout_loss(model, dev, pad, args.eval_batch_size)
        acc = answer_accuracy(model, tokenizer, dev, args.eval_batch_size, generate_limit)
    return SFTReport(before, after, acc, result)

