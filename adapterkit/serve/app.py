"""The FastAPI application: routes, vLLM's error shapes, runtime adapter load/unload."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..errors import AdapterError
from .access import HubAccess, bearer, hub_origin, requested_names
from .adapters import AlreadyLoaded
from .engine import Engine
from .metrics import Metrics
from .protocol import (
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    LoadLoRAAdapterRequest,
    ModelCard,
    ServeError,
    UnloadLoRAAdapterRequest,
)


@dataclass
class State:
    engine: Engine
    tokenizer: Any
    model_id: str
    root: str
    max_model_len: int
    metrics: Metrics
    runtime_lora: bool = False
    ready: bool = False
    heads: dict[str, Any] = field(default_factory=dict)  # encoder classification heads
    access: HubAccess = field(default_factory=HubAccess)  # callers' read access to hub adapters

    @property
    def base_ids(self) -> set[str]:
        return {self.model_id}


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    param = next((str(e["loc"][-1]) for e in errors if len(e.get("loc", ())) > 1), None)
    err = ServeError(400, "; ".join(parts) or "malformed request body", "BadRequestError", param)
    return JSONResponse(err.body(), status_code=400)


def build_app(state: State) -> FastAPI:
    app = FastAPI(title="adapterkit serve")
    app.state.serve = state
    _errors(app)
    _info(app, state)
    _tasks(app, state)
    _adapters(app, state)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(json.JSONDecodeError)
    async def _json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return JSONResponse(ServeError(400, f"malformed JSON body: {exc}").body(), status_code=400)


def _info(app: FastAPI, state: State) -> None:
    @app.get("/health")
    async def health() -> Response:
        if not state.ready or not state.engine.thread.is_alive():
            return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        cards = [ModelCard(id=state.model_id, root=state.root, max_model_len=state.max_model_len)]
        regs = await asyncio.to_thread(state.access.readable, state.engine.cache.names(),
                                       bearer(request.headers))
        for reg in regs:
            cards.append(ModelCard(id=reg.name, root=reg.source, parent=state.model_id,
                                   created=reg.created, max_model_len=state.max_model_len))
        return JSONResponse({"object": "list", "data": [c.model_dump() for c in cards]})


def _tasks(app: FastAPI, state: State) -> None:
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        from .generate import completions

        _need(state, "generate")
        await _readable(state, req, request)
        return await completions(state, req, request)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        from .generate import chat

        _need(state, "generate")
        await _readable(state, req, request)
        return await chat(state, req, request)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
        from .encoders import embeddings

        _need(state, "encode")
        await _readable(state, req, request)
        return await embeddings(state, req)

    @app.post("/classify")
    async def classify(req: ClassifyRequest, request: Request) -> Any:
        from .encoders import classify

        _need(state, "encode")
        await _readable(state, req, request)
        return await classify(state, req)


async def _readable(state: State, req: Any, request: Request) -> None:
    """404, as for a name that does not exist, when the request names an adapter from a hub
    repo the caller's token cannot read (see ``serve.access``)."""
    token = bearer(request.headers)
    for name in requested_names(req):
        reg = state.engine.cache.lookup(name)
        if reg is not None and reg.origin is not None and \
                not await asyncio.to_thread(state.access.can_read, *reg.origin, token):
            raise ServeError(404, f"The model `{name}` does not exist.", "NotFoundError",
                             "model" if name == req.model else "adapters")


def _adapters(app: FastAPI, state: State) -> None:
    @app.post("/v1/load_lora_adapter")
    async def load(req: LoadLoRAAdapterRequest, request: Request) -> Any:
        _runtime(state)
        if req.lora_name in state.base_ids:
            raise ServeError(400, f"'{req.lora_name}' is the base model's name", param="lora_name")
        try:
            origin = hub_origin(req.lora_path)
            path = None if origin is None else await asyncio.to_thread(
                state.access.pull, req.lora_path, bearer(request.headers))  # the caller's token
            await asyncio.to_thread(state.engine.cache.register, req.lora_name, req.lora_path,
                                    path, origin)
        except AlreadyLoaded as exc:
            raise ServeError(400, str(exc), "InvalidUserInput", "lora_name") from None
        except AdapterError as exc:
            raise ServeError(400, f"Loading adapter '{req.lora_name}' from {req.lora_path} "
                             f"failed: {exc}", "InvalidUserInput", "lora_path") from None
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(req: UnloadLoRAAdapterRequest, request: Request) -> Any:
        _runtime(state)
        reg = state.engine.cache.lookup(req.lora_name)
        if reg is not None and not await asyncio.to_thread(state.access.readable, [reg],
                                                           bearer(request.headers)):
            reg = None
        try:
            if reg is None:
                raise KeyError(req.lora_name)
            await asyncio.to_thread(state.engine.cache.unregister, req.lora_name)
        except KeyError:
            raise ServeError(404, f"The lora adapter '{req.lora_name}' cannot be found.",
                             "NotFoundError", "lora_name") from None
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")


def _runtime(state: State) -> None:
    if not state.runtime_lora:
        raise ServeError(404, "runtime adapter loading is off; start the server with "
                         "--enable-runtime-lora", "NotFoundError")


def _need(state: State, task: str) -> None:
    if not state.ready:
        raise ServeError(503, "the model is still loading")
    has = "generate" if state.engine.decoder else "encode"
    if has != task:
        what = "text generation (/v1/completions, /v1/chat/completions)" if has == "generate" \
            else "encoding (/v1/embeddings, /classify)"
        raise ServeError(400, f"model {state.model_id!r} serves {what} only")
