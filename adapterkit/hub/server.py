"""Running the hub: on uvicorn in the foreground (``adapterkit hub serve``) or in a background
thread of the current process (:class:`ServerThread`, for tests and benchmarks); either way on
uvicorn's h11 protocol with zero-copy file bodies (:mod:`.zerocopy`)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from .app import create_app
from .settings import Hub, HubSettings

log = logging.getLogger("adapterkit.hub")


def _collector(hub: Hub, every_s: float, stop: threading.Event) -> None:
    from .gc import collect_expired

    while not stop.wait(every_s):
        try:
            collect_expired(hub)
        except Exception:  # a failed round is retried at the next one; the server keeps serving
            log.exception("collecting expired uploads failed")


def serve(settings: HubSettings, host: str = "127.0.0.1", port: int = 8500, log_level: str = "info",
          collect_every_s: float = 600.0) -> None:
    """Serve until interrupted; every ``collect_every_s`` seconds (0: never) uploads that were
    never committed within the grace period are collected."""
    import uvicorn

    from .zerocopy import ZeroCopyH11Protocol

    hub = Hub(settings)
    stop = threading.Event()
    if collect_every_s > 0:
        threading.Thread(target=_collector, args=(hub, collect_every_s, stop), daemon=True).start()
    try:
        uvicorn.run(create_app(hub), host=host, port=port, log_level=log_level, access_log=False,
                    timeout_keep_alive=30, http=ZeroCopyH11Protocol)
    finally:
        stop.set()
        hub.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A hub on ``127.0.0.1`` and a free port, served by uvicorn in a daemon thread."""

    def __init__(self, root: str | Path, db_url: str | None = None, **options: object) -> None:
        import uvicorn

        from .zerocopy import ZeroCopyH11Protocol

        self.hub = Hub.open(root, db_url, **options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.hub), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, timeout_keep_alive=30, http=ZeroCopyH11Protocol)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the hub did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.hub.close()
