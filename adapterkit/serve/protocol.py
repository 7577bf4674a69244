"""Request and response shapes of the OpenAI-compatible API, with vLLM's field names and defaults.

Unknown request fields are accepted and ignored (clients send extensions through
``extra_body``). adapterkit's own extension is ``adapters: [{"name", "weight"}]``; LoRAX's
``merged_adapters`` is its alias. Errors have vLLM's shape,
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ServeError(Exception):
    """An error answered with vLLM's error shape and ``status``."""

    def __init__(self, status: int, message: str, type: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or HTTPStatus(status).phrase.replace(" ", "") + "Error"
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class AdapterWeight(_Open):
    name: str
    weight: float = 1.0


class _Sampling(_Open):
    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    repetition_penalty: float | None = None
    adapters: list[AdapterWeight] | None = None
    merged_adapters: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None


class EmbeddingRequest(_Open):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = "float"
    adapters: list[AdapterWeight] | None = None


class ClassifyRequest(_Open):
    model: str | None = None
    input: str | list[str]
    adapters: list[AdapterWeight] | None = None


class LoadLoRAAdapterRequest(_Open):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(_Open):
    lora_name: str
    lora_int_id: int | None = None


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int | None = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "adapterkit"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
