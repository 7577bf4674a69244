"""Evaluating causal LMs on SFT data: held-out loss and perplexity over trained tokens, and
greedy generations graded by exact match against the records' answers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .metrics import exact_match
from .sft import IGNORE, SFTExample, collate


@torch.no_grad()
def heldout_loss(model: Any, data: Sequence[SFTExample], pad_id: int,
                 batch_size: int = 8) -> dict[str, float]:
    """Mean cross-entropy over every trained (label != -100) token of ``data``, and its
    perplexity; the model is left in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        batch = collate(data[i:i + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
            ignore_index=IGNORE, reduction="sum")
        total += float(loss)
        count += int((labels != IGNORE).sum())
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": float(count)}


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             batch_size: int = 8) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts``, in their order, each cut after its first
    end-of-sequence token. Batches are formed by prompt length, so little left-padding is
    computed."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    out: list[list[int]] = [[] for _ in prompts]
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        chunk = [prompts[k] for k in rows]
        n = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for j, p in enumerate(chunk):
            ids[j, n - len(p):] = torch.tensor(list(p))
            mask[j, n - len(p):] = 1
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=eos)
        for k, row in zip(rows, gen[:, n:].tolist()):
            out[k] = row[:row.index(eos) + 1] if eos in row else row
    return out


def answer_accuracy(model: Any, tokenizer: Any, data: Sequence[SFTExample],
                    batch_size: int = 8, limit: int | None = 64) -> dict[str, Any]:
    """Exact match of the greedy answers to the records' answers (those that have one), with
    a few samples; ``limit`` caps how many records are generated for."""
    graded = [e for e in data if e.prompt is not None and e.answer is not None]
    if limit is not None:
        graded = graded[:limit]
    if not graded:
        return {"exact_match": None, "graded": 0, "samples": []}
    longest = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in graded)
    gens = generate(model, tokenizer, [e.prompt for e in graded], longest + 4, batch_size)  # type: ignore[misc]
    texts = [tokenizer.decode(g, skip_special_tokens=True) for g in gens]
    answers = [str(e.answer) for e in graded]
    samples = [{"prompt": tokenizer.decode(list(e.prompt or ()), skip_special_tokens=True)[-200:],
                "gold": a, "generated": t} for e, a, t in list(zip(graded, answers, texts))[:3]]
    return {"exact_match": exact_match(texts, answers), "graded": len(graded), "samples": samples}
