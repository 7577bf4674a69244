"""Putting a server together: the model (``smollm2``, ``minilm`` or a transformers directory), the
engine, the startup adapters, and uvicorn, in the foreground or in a thread (tests, benchmarks)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdapterError
from .access import hub_origin
from .app import State, build_app
from .engine import Engine
from .metrics import Metrics
from .scheduler import SchedulerConfig

_DECODERS = ("ForCausalLM", "LMHeadModel")


@dataclass
class Options:
    model: str
    adapters: list[tuple[str, str]] = field(default_factory=list)
    served_model_name: str | None = None
    max_model_len: int | None = None
    max_resident_bytes: int | None = None
    runtime_lora: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


def load_model(name: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any, str]:
    """(model, tokenizer, root directory) for ``smollm2``, ``minilm`` or a directory."""
    import torch
    import transformers

    from ..train.models import MINILM, _quiet, model_dir

    _quiet()
    if name == "smollm2":
        from ..train.smollm2 import smollm2_dir

        directory = str(smollm2_dir())
    else:
        directory = model_dir(name)
    config = transformers.AutoConfig.from_pretrained(directory)
    archs = config.architectures or []
    decoder = name != MINILM and any(a.endswith(_DECODERS) for a in archs)
    kind = transformers.AutoModelForCausalLM if decoder else \
        transformers.AutoModelForSequenceClassification
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise AdapterError(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    extra: dict[str, Any] = {} if decoder else {"num_labels": getattr(config, "num_labels", 2)}
    model: Any = kind.from_pretrained(directory, dtype=torch_dtype, **extra)
    model = model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    return model, tokenizer, directory


def create_state(opts: Options) -> State:
    """Load the model, start the engine and register the startup adapters."""
    model, tokenizer, root = load_model(opts.model, opts.device, opts.dtype)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    max_len = opts.max_model_len or limit
    if max_len > limit:
        raise AdapterError(f"--max-model-len {max_len} exceeds the model's {limit} positions")
    model_id = opts.served_model_name or opts.model
    metrics = Metrics(model_id)
    engine = Engine(model, tokenizer, opts.scheduler, max_len, opts.max_resident_bytes, metrics)
    metrics.engine = engine
    engine.start()
    state = State(engine, tokenizer, model_id, root, max_len, metrics, opts.runtime_lora)
    if not engine.decoder and hasattr(model, "classifier"):  # before adapters bring their heads
        state.heads["classifier"] = {k: t.detach().clone()
                                     for k, t in model.classifier.state_dict().items()}
    try:
        for name, source in opts.adapters:
            if name in state.base_ids:
                raise AdapterError(f"--adapter {name}=...: {name!r} is the base model's name")
            engine.cache.register(name, source, origin=hub_origin(source))
    except Exception:
        engine.shutdown()
        raise
    state.ready = True
    return state


def serve(opts: Options, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    state = create_state(opts)
    try:
        uvicorn.run(build_app(state), host=host, port=port, log_level="warning")
    finally:
        state.engine.shutdown()


class ServerThread:
    """A server on 127.0.0.1 at a free port, in a thread; ``url`` is its base URL."""

    def __init__(self, opts: Options | None = None, state: State | None = None) -> None:
        import uvicorn

        self.state = state if state is not None else create_state(opts)  # type: ignore[arg-type]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(build_app(self.state), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="adapterkit-http")
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        self.state.engine.shutdown()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
