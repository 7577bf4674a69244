"""From a validated completions or chat request to token ids and sampling parameters, with
vLLM's checks and messages (the front end runs these before anything reaches the engine)."""

from __future__ import annotations

from typing import Any

from .protocol import ChatCompletionRequest, CompletionRequest, ServeError
from .sampling import SamplingParams

MAX_LOGPROBS = 20
_UNSUPPORTED = (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0))


def _bad(message: str, param: str | None = None) -> ServeError:
    return ServeError(400, message, "BadRequestError", param)


def completion_prompts(tokenizer: Any, req: CompletionRequest) -> list[tuple[list[int], str | None]]:
    """(token ids, text or None) per prompt of a completions request."""
    p = req.prompt
    if isinstance(p, str):
        items: list[Any] = [p]
    elif isinstance(p, list) and p and all(isinstance(x, int) for x in p):
        items = [p]
    else:
        items = list(p)
    if not items:
        raise _bad("The prompt is empty: give a string, a list of strings or token ids", "prompt")
    out: list[tuple[list[int], str | None]] = []
    for item in items:
        if isinstance(item, str):
            ids = tokenizer(item, add_special_tokens=True)["input_ids"] if item else []
            out.append((list(ids), item))
        else:
            out.append((list(item), None))
    vocab = len(tokenizer)
    for ids, _ in out:
        if not ids:
            raise _bad("The prompt is empty: it has no tokens", "prompt")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise _bad(f"Token ids {bad[:5]} are out of vocabulary (size {vocab})", "prompt")
    return out


def _content(message: dict[str, Any], i: int) -> dict[str, Any]:
    if not isinstance(message, dict) or "role" not in message:
        raise _bad(f"messages[{i}] must be an object with 'role' and 'content'", "messages")
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise _bad(f"messages[{i}].content must be a string or a list of text parts", "messages")
    return {**message, "content": content}


def chat_prompt(tokenizer: Any, req: ChatCompletionRequest) -> list[int]:
    if not req.messages:
        raise _bad("messages is empty: give at least one message", "messages")
    messages = [_content(m, i) for i, m in enumerate(req.messages)]
    if getattr(tokenizer, "chat_template", None) is None:
        raise _bad("this model has no chat template; use /v1/completions", "messages")
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=req.add_generation_prompt,
                                         **(req.chat_template_kwargs or {}))
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise _bad("The prompt is empty: the messages give no tokens", "messages")
    return ids


def sampling(req: CompletionRequest | ChatCompletionRequest, prompt_len: int,
             max_model_len: int) -> SamplingParams:
    """vLLM's defaults and range checks; the context check names both lengths."""
    for name, default in _UNSUPPORTED:
        value = getattr(req, name)
        if value is not None and value != default:
            raise _bad(f"{name} is not supported by this server (got {value})", name)
    if req.stream_options is not None and not req.stream:
        raise _bad("Stream options can only be defined when `stream=True`.", "stream_options")
    max_tokens, param, logprobs = _lengths(req)
    if max_tokens is None:
        max_tokens = max_model_len - prompt_len
    if max_tokens < 1:
        raise _bad(f"max_tokens must be at least 1, got {max_tokens}.", param)
    if prompt_len + max_tokens > max_model_len:
        raise _bad(f"This model's maximum context length is {max_model_len} tokens. However, you "
                   f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the messages, "
                   f"{max_tokens} in the completion). Please reduce the length of the messages "
                   "or completion.", param)
    return _ranged(req, max_tokens, logprobs)


def _ranged(req: CompletionRequest | ChatCompletionRequest, max_tokens: int,
            logprobs: int | None) -> SamplingParams:
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature < 0:
        raise _bad(f"temperature must be non-negative, got {temperature}.", "temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 < top_p <= 1:
        raise _bad(f"top_p must be in (0, 1], got {top_p}.", "top_p")
    top_k = -1 if req.top_k in (None, 0) else int(req.top_k)
    if top_k < -1:
        raise _bad(f"top_k must be -1 (disable), or at least 1, got {top_k}.", "top_k")
    if req.n < 1:
        raise _bad(f"n must be at least 1, got {req.n}.", "n")
    if req.min_tokens < 0 or req.min_tokens > max_tokens:
        raise _bad(f"min_tokens must be between 0 and max_tokens ({max_tokens}), got "
                   f"{req.min_tokens}.", "min_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, seed=req.seed, stop=stop,
                          stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos,
                          min_tokens=req.min_tokens, logprobs=logprobs,
                          include_stop_str_in_output=req.include_stop_str_in_output,
                          skip_special_tokens=req.skip_special_tokens)


def _lengths(req: CompletionRequest | ChatCompletionRequest) -> tuple[int | None, str, int | None]:
    """(max_tokens, the field that gave it, logprobs)."""
    if isinstance(req, ChatCompletionRequest):
        if req.max_completion_tokens is not None:
            return req.max_completion_tokens, "max_completion_tokens", _chat_logprobs(req)
        return req.max_tokens, "max_tokens", _chat_logprobs(req)
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_LOGPROBS:
        raise _bad(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {req.logprobs}", "logprobs")
    return req.max_tokens, "max_tokens", req.logprobs


def _chat_logprobs(req: ChatCompletionRequest) -> int | None:
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise _bad("top_logprobs needs logprobs to be true", "top_logprobs")
        if not 0 <= req.top_logprobs <= MAX_LOGPROBS:
            raise _bad(f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got "
                       f"{req.top_logprobs}", "top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None
