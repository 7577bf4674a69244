"""The adapterkit hub: a self-hosted adapter hub that speaks the Hugging Face Hub's HTTP protocol.

``adapterkit hub serve --root DIR`` runs :func:`adapterkit.hub.app.create_app` on uvicorn. The
server keeps its metadata in SQLite (under ``DIR``) or PostgreSQL (``--db``) and the file
contents in a content-addressed blob store under ``DIR/blobs``. Stock clients
(``huggingface_hub``, PEFT, transformers) use it through ``HF_ENDPOINT``; adapterkit's own client
is :mod:`adapterkit.io.hub`.
"""
