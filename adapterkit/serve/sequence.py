"""One generated sequence (one choice of one request) and the events it sends to its request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .sampling import SamplingParams, TokenChoice
from .selection import Selection
from .text import TextState


@dataclass
class Event:
    """What the engine tells a request about one of its sequences: new text and tokens, and at
    the end the finish reason and token counts; or an error."""

    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Any = None  # a ServeError


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int
    prompt: list[int]
    params: SamplingParams
    selection: Selection
    sink: Callable[[Event], None]
    text: TextState
    arrival: float = field(default_factory=time.perf_counter)
    output: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    row: int = -1  # in the engine's cache, while running
    pinned: bool = False  # its adapters hold pins in the cache
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: str | None = None
    stop_reason: str | int | None = None
    skipped: int = 0  # scheduling steps it waited while others were admitted
    entries: tuple = ()  # (prefill entry, decode entry)

    def __post_init__(self) -> None:
        self.generator = self.params.generator()

    @property
    def adapter_label(self) -> str:
        return "+".join(self.selection.names)

    def emit(self, **kw: Any) -> None:
        self.sink(Event(self.index, **kw))

    def banned(self, eos: set[int]) -> list[int]:
        """Token ids this sequence may not take yet (end-of-sequence before ``min_tokens``)."""
        p = self.params
        if len(self.output) >= p.min_tokens:
            return []
        return ([] if p.ignore_eos else list(eos)) + list(p.stop_token_ids)

    def take(self, choice: TokenChoice, now: float, eos: set[int], max_len: int) -> str:
        """Append the chosen token and decide whether the sequence ends; returns the text that
        may be handed out now (``emit_token`` sends it)."""
        token, p = choice.token, self.params
        self.output.append(token)
        if self.first_token is None:
            self.first_token = now
        self.last_token = now
        special = (token in eos and not p.ignore_eos) or token in p.stop_token_ids
        text = "" if special else self.text.add(token)
        if token in p.stop_token_ids:
            self.finished, self.stop_reason = "stop", token
        elif token in eos and not p.ignore_eos:
            self.finished = "stop"
        elif self.text.stopped is not None:
            self.finished, self.stop_reason = "stop", self.text.stopped
        elif len(self.output) >= p.max_tokens or len(self.prompt) + len(self.output) >= max_len:
            self.finished = "length"
        if self.finished is not None:
            text += self.text.flush()
        return text

    def emit_token(self, choice: TokenChoice, text: str) -> None:
        self.emit(text=text, tokens=[choice.token],
                  logprobs=[choice] if self.params.logprobs is not None else [],
                  finish_reason=self.finished, stop_reason=self.stop_reason,
                  prompt_tokens=len(self.prompt), completion_tokens=len(self.output))
