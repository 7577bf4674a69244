"""Requests the stock clients never send, made with ``huggingface_hub``'s own session and
classified by its own ``hf_raise_for_status``, so the exceptions are the client's (0.36's
``requests`` session or 2.x's ``httpx`` one)."""

from __future__ import annotations

from typing import Any

from huggingface_hub.utils import get_session, hf_raise_for_status


def send(method: str, url: str, *, token: str | None = None, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Any:
    """The response; raises the client's exception for an error answer."""
    extra = dict(headers or {})
    if token:
        extra["Authorization"] = f"Bearer {token}"
    session = get_session()
    if hasattr(session, "build_request"):  # httpx
        response = session.request(method, url, content=body, headers=extra)
    else:  # requests
        response = session.request(method, url, data=body, headers=extra)
    hf_raise_for_status(response)
    return response
