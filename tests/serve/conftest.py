"""Fixtures of the serve tests: a tiny llama directory with adapters of every routable kind, a
server on 127.0.0.1 at a free port, the official ``openai`` client, and reference outputs from
``generate()`` on a separate copy of the model with each adapter activated alone."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
import transformers as T

import adapterkit as ak
from adapterkit.serve import Options, SchedulerConfig, ServerThread

from . import tiny

MODEL_ID = "tiny"


@pytest.fixture(scope="package")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    out = {"model": tiny.save_model(root / "model")}
    out.update(tiny.save_adapters(root / "adapters"))
    return out


def options(dirs: dict[str, Path], names: list[str] | None = None, **scheduler: Any) -> Options:
    names = names if names is not None else list(tiny.ADAPTERS)
    return Options(str(dirs["model"]), adapters=[(n, str(dirs[n])) for n in names],
                   served_model_name=MODEL_ID, runtime_lora=True,
                   scheduler=SchedulerConfig(**{"max_num_seqs": 8, **scheduler}))


@pytest.fixture(scope="package")
def server(dirs: dict[str, Path]) -> Any:
    srv = ServerThread(options(dirs))
    yield srv
    srv.stop()


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="package")
def client(server: Any) -> openai.OpenAI:
    return client_for(server.url)


class Reference:
    """Greedy ``generate()`` of each adapter alone, on its own copy of the model."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.model = T.AutoModelForCausalLM.from_pretrained(dirs["model"]).eval()
        self.model.generation_config.eos_token_id = None
        self.tok = T.AutoTokenizer.from_pretrained(dirs["model"])
        self.kit = ak.AdapterKit(self.model)
        for name in tiny.ADAPTERS:
            self.kit.load(dirs[name], name)

    def tokens(self, adapter: Any, prompt: str, max_tokens: int) -> list[str]:
        ids = self.tok(prompt)["input_ids"]
        entry = ak.compose.blocks.BASE if adapter == MODEL_ID else adapter
        with torch.no_grad(), self.kit.route([entry]):  # one row: the entry as activated alone
            out = self.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens,
                                      do_sample=False)
        return [self.tok.decode([t]) for t in out[0, len(ids):].tolist()]


@pytest.fixture(scope="package")
def reference(dirs: dict[str, Path]) -> Reference:
    return Reference(dirs)


def http(url: str, method: str = "GET", body: Any = None, raw: bytes | None = None
         ) -> tuple[int, str]:
    """(status, body text) of one plain HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextmanager
def paused(server: Any) -> Iterator[None]:
    """The server's engine held between two steps for the block (nothing decodes meanwhile)."""
    reached, gate = threading.Event(), threading.Event()

    def hold() -> None:
        reached.set()
        gate.wait(120)

    server.state.engine.call(hold)
    assert reached.wait(60)
    try:
        yield
    finally:
        gate.set()
