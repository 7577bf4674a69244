"""Fixtures of the hub tests: a hub on 127.0.0.1 and a random port (SQLite or PostgreSQL, per
module), users and tokens, and a tiny BERT with a LoRA adapter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import adapterkit as ak
from adapterkit.hub.admin import member_set, token_create
from adapterkit.hub.server import ServerThread

from ..models import build, inputs_for, run
from .pg import fresh_database, pg_url

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@dataclass
class Hub:
    """A running hub and the tokens of its test users."""

    server: ServerThread
    root: Path
    db_url: str | None
    backend: str
    alice: str  # write token of alice, admin of organisation acme
    bob: str  # write token of bob, a read member of acme
    alice_read: str  # read token of alice

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, user: str, scope: str = "write", org: str | None = None) -> str:
        return token_create(self.server.hub, user, scope, org)[0]


def start_hub(stack: ExitStack, root: Path, backend: str, **options: object) -> Hub:
    db_url = None
    if backend == "postgresql":
        db_url = stack.enter_context(fresh_database(pg_url()))
    server = stack.enter_context(ServerThread(root, db_url, **options))
    alice = token_create(server.hub, "alice", "write", org="acme")[0]  # acme is new: alice is admin
    alice = token_create(server.hub, "alice", "write")[0]  # a token not limited to acme
    member_set(server.hub, "acme", "bob", "read")
    bob = token_create(server.hub, "bob", "write")[0]
    alice_read = token_create(server.hub, "alice", "read")[0]
    return Hub(server, root, db_url, backend, alice, bob, alice_read)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One hub per test module and back end."""
    with ExitStack() as stack:
        yield start_hub(stack, tmp_path_factory.mktemp(f"hub-{request.param}"), request.param)


def point_hf_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """In this process, point ``huggingface_hub`` at ``url`` as ``HF_ENDPOINT`` (and
    ``HF_HUB_DISABLE_XET=1``) do when set before the import: 0.36 reads the endpoint to parse the
    URLs of new commits even when calls pass ``endpoint=``. ``test_hf_clients.py`` sets the real
    variables in a process of its own instead."""
    from huggingface_hub import constants, file_download

    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    for module in (constants, file_download):  # 0.36 copies the template into file_download
        if hasattr(module, "HUGGINGFACE_CO_URL_TEMPLATE"):
            monkeypatch.setattr(module, "HUGGINGFACE_CO_URL_TEMPLATE", template)


@pytest.fixture(autouse=True)
def _hf_endpoint(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "hub" in request.fixturenames:
        point_hf_at(monkeypatch, request.getfixturevalue("hub").url)


@dataclass
class Adapter:
    kit: ak.AdapterKit
    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    expected: torch.Tensor


def lora_bert(seed: int = 0) -> Adapter:
    """A tiny BERT with LoRA adapter ``a`` (random, far from identity) active."""
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4, alpha=8, targets=("attn.q", "attn.v")))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in kit.parameters("a"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    kit.activate("a")
    x = inputs_for("bert")
    return Adapter(kit, model, x, run(model, "bert", x).detach())


def output_of(kit_source: str, hub: Hub, cache: Path, **options: object) -> torch.Tensor:
    """The tiny BERT's output with the adapter that ``kit.load(kit_source)`` loads."""
    model = build("bert")
    kit = ak.AdapterKit(model)
    name = kit.load(kit_source, endpoint=hub.url, cache_dir=cache, **options)
    kit.activate(name)
    return run(model, "bert", inputs_for("bert")).detach()
