"""``/v1/completions`` and ``/v1/chat/completions``: requests become engine sequences (``n`` per
prompt), events come back on an asyncio queue, and answers are built in vLLM's shapes, whole or
as server-sent events (``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``; with
``stream_options.include_usage`` a last chunk with ``"choices": []`` carries the usage; an error
mid-stream is ``data: {"error": ...}`` then ``[DONE]``). A client that goes away aborts its
sequences, which leave the batch at the engine's next step."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .protocol import ChatCompletionRequest, CompletionRequest, ServeError, new_id, now
from .requests import chat_prompt, completion_prompts, sampling
from .sampling import SamplingParams, TokenChoice
from .selection import select
from .sequence import Event, Sequence
from .text import TextState


@dataclass
class Choice:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class Run:
    """One HTTP request's sequences and the queue on which the engine's events arrive."""

    def __init__(self, state: Any, prompts: list[list[int]], params: SamplingParams,
                 selection: Any, n: int) -> None:
        self.state = state
        self.id = new_id("req")
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, event)

        tok = state.tokenizer
        self.seqs = []
        for p, ids in enumerate(prompts):
            for j in range(n):
                own = params if params.seed is None or j == 0 else replace(params, seed=params.seed + j)
                self.seqs.append(Sequence(self.id, p * n + j, ids, own, selection, sink, TextState(
                    tok, own.stop, own.include_stop_str_in_output, own.skip_special_tokens)))
        self.choices = [Choice() for _ in self.seqs]
        self.prompt_tokens = sum(len(ids) for ids in prompts)
        self.open = len(self.seqs)

    def start(self) -> None:
        self.state.engine.submit(self.seqs)

    def abort(self) -> None:
        if self.open:
            self.state.engine.abort(self.id)
            self.open = 0

    async def events(self, request: Request | None = None) -> AsyncIterator[Event]:
        """The events until every sequence has finished; with ``request``, a client that has
        gone away (checked about once a second) aborts the run."""
        checked = time.monotonic()
        while self.open:
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                event = None
            if request is not None and time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.abort()
                    return
            if event is None:
                continue
            if event.error is not None:
                self.abort()
                raise event.error
            c = self.choices[event.index]
            c.text += event.text
            c.tokens += event.tokens
            c.logprobs += event.logprobs
            if event.finish_reason is not None:
                c.finish_reason, c.stop_reason = event.finish_reason, event.stop_reason
                self.open -= 1
            yield event

    def usage(self) -> dict[str, int]:
        done = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}


def _token_text(tok: Any, token: int) -> str:
    return tok.decode([token])


def completion_logprobs(tok: Any, picks: list[TokenChoice], offset: int) -> dict[str, Any]:
    tokens, offsets = [], []
    for pick in picks:
        offsets.append(offset)
        text = _token_text(tok, pick.token)
        tokens.append(text)
        offset += len(text)
    top = [None if p.top is None else {**{_token_text(tok, t): v for t, v in p.top},
                                       _token_text(tok, p.token): p.logprob} for p in picks]
    return {"text_offset": offsets, "token_logprobs": [p.logprob for p in picks],
            "tokens": tokens, "top_logprobs": top}


def chat_logprobs(tok: Any, picks: list[TokenChoice]) -> dict[str, Any]:
    def entry(token: int, logprob: float | None) -> dict[str, Any]:
        text = _token_text(tok, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(p.token, p.logprob),
                         "top_logprobs": [entry(t, v) for t, v in (p.top or [])]} for p in picks]}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _prepare(state: Any, req: Any, chat: bool) -> tuple[Run, list[str | None]]:
    selection = select(state.engine.cache, state.base_ids, req.model,
                       [a.model_dump() for a in req.adapters] if req.adapters else None,
                       req.merged_adapters)
    if chat:
        prompts: list[tuple[list[int], str | None]] = [(chat_prompt(state.tokenizer, req), None)]
    else:
        prompts = completion_prompts(state.tokenizer, req)
    if req.n > state.engine.config.max_num_seqs:
        raise ServeError(400, f"n must be at most {state.engine.config.max_num_seqs} (the "
                         f"server's --max-num-seqs), got {req.n}", param="n")
    params = [sampling(req, len(ids), state.max_model_len) for ids, _ in prompts]
    run = Run(state, [ids for ids, _ in prompts], params[0], selection, req.n)
    if len(params) > 1:  # per-prompt max_tokens defaults (chat has one prompt)
        for seq in run.seqs:
            seq.params = params[seq.index // req.n]
    return run, [text for _, text in prompts]


async def completions(state: Any, req: CompletionRequest, request: Request) -> Any:
    run, texts = await _prepare(state, req, chat=False)
    run.start()
    created, rid = now(), new_id("cmpl")
    model = req.model or state.model_id
    echo = {s.index: (texts[s.index // req.n] or state.tokenizer.decode(s.prompt))
            for s in run.seqs} if req.echo else {}
    if req.stream:
        return _stream(run, request, _completion_chunks(state, run, req, rid, created, model, echo,
                                                        request))
    async for _ in run.events(request):
        pass
    choices = []
    for i, c in enumerate(run.choices):
        lp = completion_logprobs(state.tokenizer, c.logprobs, len(echo.get(i, ""))) \
            if req.logprobs is not None else None
        choices.append({"index": i, "text": echo.get(i, "") + c.text, "logprobs": lp,
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason})
    return JSONResponse({"id": rid, "object": "text_completion", "created": created,
                         "model": model, "choices": choices, "usage": run.usage()})


async def _completion_chunks(state: Any, run: Run, req: CompletionRequest, rid: str, created: int,
                             model: str, echo: dict[int, str], request: Request
                             ) -> AsyncIterator[str]:
    offsets = {i: len(t) for i, t in echo.items()}
    sent: set[int] = set()
    options = req.stream_options
    async for ev in run.events(request):
        text = ev.text
        if ev.index in echo and ev.index not in sent:
            text = echo[ev.index] + text
        sent.add(ev.index)
        if not text and ev.finish_reason is None and not ev.logprobs:
            continue
        lp = None
        if req.logprobs is not None:
            lp = completion_logprobs(state.tokenizer, ev.logprobs, offsets.get(ev.index, 0))
        offsets[ev.index] = offsets.get(ev.index, 0) + len(ev.text)
        chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
                 "choices": [{"index": ev.index, "text": text, "logprobs": lp,
                              "finish_reason": ev.finish_reason, "stop_reason": ev.stop_reason}],
                 "usage": run.usage() if options and options.continuous_usage_stats else None}
        yield _sse(chunk)
    if options and options.include_usage:
        yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [], "usage": run.usage()})


async def chat(state: Any, req: ChatCompletionRequest, request: Request) -> Any:
    run, _ = await _prepare(state, req, chat=True)
    run.start()
    created, rid = now(), new_id("chatcmpl")
    model = req.model or state.model_id
    if req.stream:
        return _stream(run, request, _chat_chunks(state, run, req, rid, created, model, request))
    async for _ in run.events(request):
        pass
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(state.tokenizer, c.logprobs) if req.logprobs else None,
                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
               for i, c in enumerate(run.choices)]
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created,
                         "model": model, "choices": choices, "usage": run.usage()})


async def _chat_chunks(state: Any, run: Run, req: ChatCompletionRequest, rid: str, created: int,
                       model: str, request: Request) -> AsyncIterator[str]:
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    options = req.stream_options
    for seq in run.seqs:
        yield _sse({**head, "choices": [{"index": seq.index, "delta": {"role": "assistant",
                                                                        "content": ""},
                                         "logprobs": None, "finish_reason": None}],
                    "usage": None})
    async for ev in run.events(request):
        if not ev.text and ev.finish_reason is None and not ev.logprobs:
            continue
        delta = {"content": ev.text} if ev.text else {}
        lp = chat_logprobs(state.tokenizer, ev.logprobs) if req.logprobs else None
        choice = {"index": ev.index, "delta": delta, "logprobs": lp,
                  "finish_reason": ev.finish_reason}
        if ev.finish_reason is not None:
            choice["stop_reason"] = ev.stop_reason
        yield _sse({**head, "choices": [choice],
                    "usage": run.usage() if options and options.continuous_usage_stats else None})
    if options and options.include_usage:
        yield _sse({**head, "choices": [], "usage": run.usage()})


def _stream(run: Run, request: Request, chunks: AsyncIterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except ServeError as exc:
            yield _sse(exc.body())
        finally:
            run.abort()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")
