"""The baseline of bench/serve.py: a server that swaps PEFT LoRA adapters per batch.

It answers streamed ``/v1/completions`` as ``adapterkit serve`` does (SSE chunks, a usage chunk,
``[DONE]``), enough for the load client. One worker thread takes the oldest waiting request, then
every waiting request for the same adapter (up to ``--max-batch``), calls ``set_adapter`` and runs
``generate()`` on that batch; requests for other adapters wait for a later batch. Prompts of one
batch must have one length (the benchmark's do).

    python bench/peft_server.py --model DIR --adapter NAME=PEFT_DIR ... --port N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import threading
import time
from typing import Any

import torch
import transformers as T
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from peft import PeftModel


class Job:
    def __init__(self, body: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.model = body["model"]
        self.prompt = list(body["prompt"])
        self.max_tokens = int(body.get("max_tokens", 16))
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.count = 0

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class _Streamer:
    """generate()'s streamer: the first call brings the prompts, each later one a token per row."""

    def __init__(self, jobs: list[Job], tok: Any) -> None:
        self.jobs, self.tok, self.started = jobs, tok, False

    def put(self, value: torch.Tensor) -> None:
        if not self.started:
            self.started = True
            return
        for job, token in zip(self.jobs, value.reshape(-1).tolist()):
            if job.count < job.max_tokens:
                job.count += 1
                job.put(self.tok.decode([token]))

    def end(self) -> None:
        for job in self.jobs:
            job.put(None)


def worker(model: Any, tok: Any, waiting: queue.Queue, max_batch: int) -> None:
    pending: list[Job] = []
    while True:
        while not pending or not waiting.empty():
            try:
                pending.append(waiting.get(timeout=None if not pending else 0))
            except queue.Empty:
                break
        name = pending[0].model
        batch = [j for j in pending if j.model == name and len(j.prompt) == len(pending[0].prompt)]
        batch = batch[:max_batch]
        pending = [j for j in pending if j not in batch]
        ids = torch.tensor([j.prompt for j in batch])
        with torch.inference_mode():
            if name in model.peft_config:
                model.set_adapter(name)
                model.generate(ids, max_new_tokens=max(j.max_tokens for j in batch),
                               do_sample=False, streamer=_Streamer(batch, tok))
            else:
                with model.disable_adapter():
                    model.generate(ids, max_new_tokens=max(j.max_tokens for j in batch),
                                   do_sample=False, streamer=_Streamer(batch, tok))


def build(model: Any, tok: Any, max_batch: int) -> FastAPI:
    app = FastAPI()
    waiting: queue.Queue = queue.Queue()
    threading.Thread(target=worker, args=(model, tok, waiting, max_batch), daemon=True).start()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        job = Job(await request.json(), asyncio.get_running_loop())
        waiting.put(job)

        async def body() -> Any:
            head = {"id": f"cmpl-{id(job)}", "object": "text_completion",
                    "created": int(time.time()), "model": job.model}
            while (text := await job.events.get()) is not None:
                yield "data: " + json.dumps({**head, "choices": [
                    {"index": 0, "text": text, "logprobs": None, "finish_reason": None}],
                    "usage": None}) + "\n\n"
            usage = {"prompt_tokens": len(job.prompt), "completion_tokens": job.count,
                     "total_tokens": len(job.prompt) + job.count}
            yield "data: " + json.dumps({**head, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", action="append", default=[])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = T.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    base.generation_config.eos_token_id = None
    tok = T.AutoTokenizer.from_pretrained(args.model)
    pairs = [a.split("=", 1) for a in args.adapter]
    model = PeftModel.from_pretrained(base, pairs[0][1], adapter_name=pairs[0][0])
    for name, path in pairs[1:]:
        model.load_adapter(path, adapter_name=name)
    model.eval()
    uvicorn.run(build(model, tok, args.max_batch), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
