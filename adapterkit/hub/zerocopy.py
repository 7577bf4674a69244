"""Zero-copy file bodies on uvicorn: the ASGI ``http.response.zerocopysend`` extension.

uvicorn's HTTP/1.1 protocols take a response body only as bytes, so a file is read into memory
chunk by chunk (a thread hop each) and copied into the socket. :class:`ZeroCopyH11Protocol` is
uvicorn's h11 protocol whose requests offer the extension: a ``{"type":
"http.response.zerocopysend", "file": f, "offset": o, "count": n, "more_body": False}`` message
after ``http.response.start`` sends ``n`` bytes of ``f`` from ``o`` with
:meth:`asyncio.loop.sendfile` (``os.sendfile`` on a plain TCP socket; it reads and writes in
chunks itself where the transport cannot). h11 still frames the message: it is handed a
placeholder of the body's length (``send_with_data_passthrough``), so Content-Length is checked
as for any body. A client that goes away mid-file closes the connection, as with a bytes body.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

ZEROCOPY = "http.response.zerocopysend"


class _Span:
    """Stands for ``count`` file bytes in h11's output (h11 only takes their length)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class ZeroCopyCycle(RequestResponseCycle):
    """A request/response cycle that also takes ``http.response.zerocopysend``."""

    async def send(self, message: Any) -> None:
        if message["type"] != ZEROCOPY or not self.response_started or self.response_complete:
            await super().send(message)  # its checks refuse a zero-copy message out of turn
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        file = message["file"]
        offset = message.get("offset")
        offset = file.tell() if offset is None else offset
        count = message.get("count")
        count = os.fstat(file.fileno()).st_size - offset if count is None else count
        try:
            pieces = self.conn.send_with_data_passthrough(h11.Data(data=_Span(count)))  # type: ignore[arg-type]
            for piece in pieces or ():
                if not isinstance(piece, _Span):
                    self.transport.write(piece)
                elif count and await asyncio.get_running_loop().sendfile(
                        self.transport, file, offset, count) != count:
                    raise ConnectionError("the file ended before the announced length")
        except (OSError, RuntimeError):  # the client went away, or the transport is closing
            self.disconnected = True
            self.transport.close()
            return
        if not message.get("more_body", False):
            await super().send({"type": "http.response.body", "body": b"", "more_body": False})


class ZeroCopyH11Protocol(H11Protocol):
    """uvicorn's h11 protocol whose request cycles are :class:`ZeroCopyCycle`\\ s."""

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        # A request made a new cycle whose task has not started yet: upgrade it in place.
        if cycle is not before and type(cycle) is RequestResponseCycle:
            cycle.__class__ = ZeroCopyCycle
            cycle.scope.setdefault("extensions", {})[ZEROCOPY] = {}
