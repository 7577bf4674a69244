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
