"""Supervised fine-tuning data for causal LMs: chat, prompt-completion and plain-text records
tokenized through the model's chat template, with the loss on completion (assistant) tokens
only: every prompt token's label is -100.

Records (one JSON object per JSONL line, or one row of a CSV or parquet file):

- ``chat``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` with at least one assistant
  turn; every assistant turn is trained on.
- ``prompt-completion``: ``{"prompt": str, "completion": str}``; with a chat template the prompt
  is the user turn and the completion the assistant turn.
- ``text``: ``{"text": str}``; every token is trained on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .datasets import DataError, field, read_rows

FORMATS = ("chat", "prompt-completion", "text")
TRUNCATION = ("error", "left", "right")
IGNORE = -100


@dataclass(frozen=True)
class SFTExample:
    """One tokenized record: ``labels[i]`` is ``input_ids[i]`` on trained tokens, else -100.
    ``prompt`` (token ids up to the last assistant turn) and ``answer`` (that turn's text) are
    kept for generation-based evaluation; None for ``text`` records."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt: tuple[int, ...] | None = None
    answer: str | None = None


def _messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    messages = field(row, "messages", where, list)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be an object with string 'role' and "
                            f"'content', got {str(m)[:80]!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the chat has no assistant turn, so there is nothing to "
                        f"train on (roles: {[m['role'] for m in messages]})")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered chat as (text, trained) pieces: assistant turns trained, the rest not.
    Each prefix of the conversation must render to a prefix of the whole."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                             add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(head) and len(head) >= done):
            raise DataError("the tokenizer's chat template does not render a conversation's "
                            "prefixes as prefixes of the whole; use --format text")
        pieces += [(head[done:], False), (upto[len(head):], True)]
        done = len(upto)
    pieces.append((full[done:], False))
    return [(t, trained) for t, trained in pieces if t]


def _chat_of(row: dict[str, Any], fmt: str, where: str) -> list[dict[str, str]]:
    if fmt == "chat":
        return _messages(row, where)
    prompt, completion = field(row, "prompt", where), field(row, "completion", where)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _pieces(tokenizer: Any, row: dict[str, Any], fmt: str,
            where: str) -> tuple[list[tuple[str, bool]], str | None]:
    if fmt == "text":
        return [(field(row, "text", where), True)], None
    chat = _chat_of(row, fmt, where)
    answer = [m for m in chat if m["role"] == "assistant"][-1]["content"]
    if getattr(tokenizer, "chat_template", None):
        return _segments(tokenizer, chat), answer
    if fmt != "prompt-completion":
        raise DataError("--format chat needs a tokenizer with a chat template")
    eos = tokenizer.eos_token or ""
    return [(chat[0]["content"], False), (chat[1]["content"] + eos, True)], answer


def _truncate(ids: list[int], mask: list[bool], max_length: int, how: str,
              where: str) -> tuple[list[int], list[bool]]:
    if len(ids) <= max_length:
        return ids, mask
    if how == "error":
        raise DataError(f"{where}: {len(ids)} tokens, more than the maximum length {max_length}; "
                        "raise --max-length or choose --truncation left (drop the prompt's "
                        "first tokens) or right (drop the last tokens)")
    cut = slice(len(ids) - max_length, None) if how == "left" else slice(0, max_length)
    ids, mask = ids[cut], mask[cut]
    if not any(mask):
        raise DataError(f"{where}: after {how} truncation to {max_length} tokens no trained "
                        "token is left; raise --max-length")
    return ids, mask


def tokenize(tokenizer: Any, row: dict[str, Any], fmt: str, max_length: int,
             truncation: str = "error", where: str = "record") -> SFTExample:
    """One record as an :class:`SFTExample`; labels and ids are cut by one mask, so they stay
    aligned under truncation."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; formats: {list(FORMATS)}")
    if truncation not in TRUNCATION:
        raise DataError(f"unknown truncation {truncation!r}; choose one of {list(TRUNCATION)}")
    pieces, answer = _pieces(tokenizer, row, fmt, where)
    ids: list[int] = []
    mask: list[bool] = []
    for i, (text, trained) in enumerate(pieces):
        toks = tokenizer(text, add_special_tokens=fmt == "text" and i == 0)["input_ids"]
        ids += toks
        mask += [trained] * len(toks)
    if fmt == "text" and tokenizer.eos_token_id is not None:
        ids, mask = [*ids, tokenizer.eos_token_id], [*mask, True]
    ids, mask = _truncate(ids, mask, max_length, truncation, where)
    labels = tuple(t if m else IGNORE for t, m in zip(ids, mask))
    prompt = None
    if answer is not None:  # the tokens before the last trained run: the last turn's prompt
        start = max(i for i, m in enumerate(mask) if m)
        while start > 0 and mask[start - 1]:
            start -= 1
        prompt = tuple(ids[:start]) if start > 0 else None
    return SFTExample(tuple(ids), labels, prompt, answer)


def read_sft(path: str, tokenizer: Any, fmt: str, max_length: int, truncation: str = "error",
             limit: int | None = None) -> list[SFTExample]:
    """The records of ``path`` (JSONL, CSV or parquet) tokenized; errors name the record."""
    rows = read_rows(path, limit)
    if not rows:
        raise DataError(f"{path}: no records")
    return [tokenize(tokenizer, row, fmt, max_length, truncation, f"{path} record {i + 1}")
            for i, row in enumerate(rows)]


def collate(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_batches(data: Sequence[SFTExample], batch_size: int, seed: int,
                pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled training batches without end (every epoch reshuffled)."""
    rng = random.Random(seed)
    order = list(range(len(data)))
    size = min(batch_size, len(data))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield collate([data[j] for j in order[i:i + size]], pad_id)
