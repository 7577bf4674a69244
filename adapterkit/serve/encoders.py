"""``/v1/embeddings`` and ``/classify`` for encoder models (MiniLM and other bert-family
classifiers), with per-request adapters through the same Route as generation.

- Embeddings: the mean of the encoder's last hidden states over the input's tokens, L2-normalised
  (how all-MiniLM-L6-v2 is pooled for sentence embeddings).
- Classification: the pooled output through the classification head of the request's adapter
  (the head trained and saved with it, ``train_also=("classifier",)``), else the model's own;
  ``probs`` is the softmax of the logits; ``label`` is the config's label name of the largest.

Heads are kept per adapter (loading one copies its head into the model's module; the copy each
adapter brought is kept beside it and used for its rows), so adapters with different heads
share one batch. Prompt and prefix adapters are refused here: they change the sequence layout
that pooling reads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
import torch.nn.functional as F
from fastapi.responses import JSONResponse

from .protocol import ClassifyRequest, EmbeddingRequest, ServeError, new_id, now
from .selection import Selection, select

HEAD = "classifier"
MAX_INPUTS = 256


def _texts(value: Any, tokenizer: Any) -> list[list[int]]:
    items = [value] if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(x, int) for x in value)) else value
    if not isinstance(items, list) or not items:
        raise ServeError(400, "input is empty: give a string, a list of strings or token ids",
                         param="input")
    if len(items) > MAX_INPUTS:
        raise ServeError(400, f"at most {MAX_INPUTS} inputs per request, got {len(items)}",
                         param="input")
    out = []
    for item in items:
        ids = tokenizer(item, truncation=True)["input_ids"] if isinstance(item, str) else item
        if isinstance(item, str) and not item.strip():
            raise ServeError(400, "an input is empty", param="input")
        out.append(list(ids))
    return out


def _selection(state: Any, req: Any) -> Selection:
    sel = select(state.engine.cache, state.base_ids, req.model,
                 [a.model_dump() for a in req.adapters] if req.adapters else None, None)
    if sel.has_input:
        raise ServeError(400, "prompt and prefix adapters are not served for embeddings or "
                         "classification", param="model")
    return sel


def _batch(ids: list[list[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def _encode(state: Any, sel: Selection, ids: list[list[int]]) -> Any:
    engine = state.engine
    entry = engine.entries.of(sel)[0]
    pad = state.tokenizer.pad_token_id or 0
    batch = _batch(ids, pad, engine.device)
    out = engine.forward([entry] * len(ids), module=engine.model.base_model, **batch)
    return out, batch["attention_mask"]


def _head(state: Any, sel: Selection) -> dict[str, torch.Tensor]:
    cache = state.engine.cache
    for item in sel.items:
        res = cache.resident.get(item.digest)
        if res is not None and HEAD in res.heads:
            return res.heads[HEAD]
    if HEAD not in state.heads:
        raise ServeError(400, f"model {state.model_id!r} has no classification head", param="model")
    return state.heads[HEAD]


async def _on_engine(state: Any, sel: Selection, fn: Any) -> Any:
    def job() -> Any:
        if not state.engine.cache.ready(sel.digests):
            raise ServeError(503, "the request's adapter is not resident; retry")
        return fn()

    digests = sel.digests
    await asyncio.wrap_future(state.engine.call(lambda: state.engine.cache.acquire(digests)))
    try:
        for _ in range(600):  # a cold adapter loads off the engine thread
            if await asyncio.wrap_future(state.engine.call(
                    lambda: state.engine.cache.ready(digests))):
                break
            await asyncio.sleep(0.05)
        return await asyncio.wrap_future(state.engine.call(job))
    finally:
        state.engine.call(lambda: state.engine.cache.release(digests))


async def embeddings(state: Any, req: EmbeddingRequest) -> Any:
    if req.encoding_format != "float":
        raise ServeError(400, f"encoding_format {req.encoding_format!r}: only 'float' is served",
                         param="encoding_format")
    sel = _selection(state, req)
    ids = _texts(req.input, state.tokenizer)

    def run() -> list[list[float]]:
        out, mask = _encode(state, sel, ids)
        hidden = out.last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(pooled, dim=-1).float().tolist()

    vectors = await _on_engine(state, sel, run)
    tokens = sum(len(x) for x in ids)
    return JSONResponse({"object": "list", "model": req.model or state.model_id,
                         "data": [{"index": i, "object": "embedding", "embedding": v}
                                  for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def classify(state: Any, req: ClassifyRequest) -> Any:
    sel = _selection(state, req)
    ids = _texts(req.input, state.tokenizer)
    head = _head(state, sel)
    labels = getattr(state.engine.model.config, "id2label", None) or {}

    def run() -> list[list[float]]:
        out, _ = _encode(state, sel, ids)
        pooled = out.pooler_output
        logits = F.linear(pooled, head["weight"].to(pooled), head["bias"].to(pooled))
        return torch.softmax(logits.float(), -1).tolist()

    probs = await _on_engine(state, sel, run)
    tokens = sum(len(x) for x in ids)
    data = []
    for i, p in enumerate(probs):
        best = max(range(len(p)), key=p.__getitem__)
        data.append({"index": i, "label": labels.get(best, str(best)) if len(labels) == len(p)
                     else str(best), "probs": p, "num_classes": len(p)})
    return JSONResponse({"id": new_id("classify"), "object": "list", "created": now(),
                         "model": req.model or state.model_id, "data": data,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
