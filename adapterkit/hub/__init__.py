"""The adapterkit hub: a self-hosted adapter hub that speaks the Hugging Face Hub's HTTP protocol.

``adapterkit hub serve --root DIR`` runs :func:`adapterkit.hub.app.create_app` on uvicorn. The
server keeps its metadata in SQLite (under ``DIR``) or PostgreSQL (``--db``) and the file
contents in a content-addressed blob store under ``DIR/blobs``. Stock clients
(``huggingface_hub``, PEFT, transformers) use it through ``HF_ENDPOINT``; adapterkit's own client
is :mod:`adapterkit.io.hub`.

Searching it from Python: ``adapterkit.hub.search(query, endpoint=..., token=...,
compatible_with=model, limit=...)`` (the client, :mod:`adapterkit.io.hub.search`; importing it
needs none of the server's dependencies). The server's search is :mod:`adapterkit.hub.catalog`.
"""

from ..io.hub.search import SearchRecord, model_fingerprint, search

__all__ = ["SearchRecord", "model_fingerprint", "search"]
