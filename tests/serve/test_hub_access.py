"""Access-filtered serving of hub adapters: ``/v1/load_lora_adapter`` pulls a ``hub://`` source
with the caller's bearer token, never with the server's own (here ``$ADAPTERKIT_HUB_TOKEN`` is
alice's, who can read everything), and a request, listing or unload naming an adapter from a
hub repo the caller cannot read is answered as for a name that does not exist, whoever loaded
it. A real hub and the official ``openai`` client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

import adapterkit as ak
from adapterkit.serve import Options, ServerThread

from ..hub.conftest import Hub, start_hub
from . import tiny
from .conftest import MODEL_ID, client_for


@dataclass
class Served:
    hub: Hub
    server: ServerThread

    def call(self, path: str, body: Any, token: str | None) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.server.url + path, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, {"text": resp.read().decode()}
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def load(self, name: str, source: str, token: str | None) -> tuple[int, dict[str, Any]]:
        return self.call("/v1/load_lora_adapter", {"lora_name": name, "lora_path": source}, token)

    def models(self, token: str) -> set[str]:
        return {m.id for m in client_for(self.server.url).with_options(api_key=token).models.list()}

    def complete(self, token: str, model: str, **extra: Any) -> Any:
        client = client_for(self.server.url).with_options(api_key=token)
        return client.completions.create(model=model, prompt="w1 w2", max_tokens=2, temperature=0,
                                         extra_body=extra or None)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve-hub")
    model = tiny.save_model(root / "model")
    adapters = tiny.save_adapters(root / "adapters", ["lora", "lora2"])
    with ExitStack() as stack:
        hub = start_hub(stack, root / "hub", "sqlite")
        kit = ak.AdapterKit(tiny.model())
        for repo, name, private in (("alice/serve-priv", "lora", True), ("alice/serve-pub", "lora2", False),
                                    ("alice/serve-gone", "lora2", True)):
            kit.load(adapters[name], repo.split("/")[1])
            kit.push(repo.split("/")[1], repo, token=hub.alice, endpoint=hub.url, private=private)
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("ADAPTERKIT_HUB", hub.url)
        mp.setenv("ADAPTERKIT_HUB_TOKEN", hub.alice)  # the server's own token reads everything
        mp.setenv("ADAPTERKIT_CACHE", str(root / "cache"))
        opts = Options(str(model), adapters=[("boot-priv", "hub://alice/serve-priv")],
                       served_model_name=MODEL_ID, runtime_lora=True)
        server = stack.enter_context(ServerThread(opts))
        yield Served(hub, server)


def test_a_hub_adapter_is_pulled_with_the_callers_token(served: Served) -> None:
    status, body = served.load("bobs", "hub://alice/serve-priv", served.hub.bob)
    assert status == 404 and body["error"]["type"] == "NotFoundError"
    assert body["error"]["param"] == "lora_path" and "alice/serve-priv" in body["error"]["message"]
    assert served.load("anon", "hub://alice/serve-priv", None)[0] == 404  # nor without a token
    assert "bobs" not in served.models(served.hub.alice) and "anon" not in served.models(served.hub.alice)
    assert served.load("priv", "hub://alice/serve-priv", served.hub.alice)[0] == 200
    assert served.load("pub", "hub://alice/serve-pub", None)[0] == 200  # public: anyone
    assert served.load("pub2", "hub://alice/serve-pub", "not-a-hub-token")[0] == 200  # as anonymous
    status, body = served.load("bad", "hub://not a repo", served.hub.alice)
    assert status == 400 and body["error"]["param"] == "lora_path"


def test_a_request_naming_an_unreadable_adapter_gets_404(served: Served) -> None:
    served.load("priv", "hub://alice/serve-priv", served.hub.alice)
    served.load("pub", "hub://alice/serve-pub", None)
    hub = served.hub
    for token in (hub.bob, "unused"):
        for model in ("priv", "boot-priv"):  # loaded at run time or at startup, by whoever
            with pytest.raises(openai.NotFoundError, match=model):
                served.complete(token, model)
        with pytest.raises(openai.NotFoundError, match="priv"):
            served.complete(token, MODEL_ID, adapters=[{"name": "pub"}, {"name": "priv", "weight": 0.5}])
        with pytest.raises(openai.NotFoundError, match="boot-priv"):
            served.complete(token, MODEL_ID, merged_adapters={"ids": ["pub", "boot-priv"]})
        assert served.complete(token, "pub").choices[0].text  # the public one serves anyone
    mine = served.complete(hub.alice, "priv").choices[0].text
    assert mine == served.complete(hub.alice_read, "boot-priv").choices[0].text  # same content
    both = served.complete(hub.alice, MODEL_ID, adapters=[{"name": "pub"}, {"name": "priv"}])
    assert both.choices[0].text


def test_listing_and_unloading_follow_read_access(served: Served) -> None:
    served.load("priv", "hub://alice/serve-priv", served.hub.alice)
    served.load("pub", "hub://alice/serve-pub", None)
    assert {"priv", "boot-priv", "pub"} <= served.models(served.hub.alice)
    seen = served.models(served.hub.bob)
    assert "pub" in seen and not {"priv", "boot-priv"} & seen
    status, body = served.call("/v1/unload_lora_adapter", {"lora_name": "priv"}, served.hub.bob)
    assert status == 404 and body["error"]["type"] == "NotFoundError"
    assert "priv" in served.models(served.hub.alice)  # still served to those who can read it


def test_a_deleted_repo_stops_serving_once_the_kept_answer_expires(served: Served, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    assert served.load("gone", "hub://alice/serve-gone", served.hub.alice)[0] == 200
    assert served.complete(served.hub.alice, "gone").choices[0].text
    HfApi(endpoint=served.hub.url, token=served.hub.alice).delete_repo("alice/serve-gone")
    served.server.state.access.ttl_s = 0.0  # ask the hub again at every request
    try:
        with pytest.raises(openai.NotFoundError, match="gone"):
            served.complete(served.hub.alice, "gone")
        assert served.complete(served.hub.alice, "priv").choices[0].text
    finally:
        served.server.state.access.ttl_s = 30.0
