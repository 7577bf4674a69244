"""Runtime load/unload with vLLM's bodies and plain-text answers, for any method; identity by
content (a name reloaded with other files serves the new ones); and every bad input of the API,
each with vLLM's error shape and status, the server serving on."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import adapterkit as ak

from ..models import build
from .conftest import MODEL_ID, http, paused


def _load(url: str, name: str, path: Any) -> tuple[int, str]:
    return http(url + "/v1/load_lora_adapter", "POST", {"lora_name": name, "lora_path": str(path)})


def _unload(url: str, name: str) -> tuple[int, str]:
    return http(url + "/v1/unload_lora_adapter", "POST", {"lora_name": name})


def _error(status_text: tuple[int, str], status: int, *words: str) -> dict:
    status_got, text = status_text
    assert status_got == status, text
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    for w in words:
        assert w in err["message"], err["message"]
    return err


def _greedy(client: Any, model: str, n: int = 12) -> str:
    return client.completions.create(model=model, prompt="w60 w61 w62", max_tokens=n,
                                     temperature=0, extra_body={"ignore_eos": True}).choices[0].text


def test_load_use_unload(server: Any, client: Any, dirs: dict) -> None:
    assert _load(server.url, "rt_ia3", dirs["ia3"]) == (
        200, "Success: LoRA adapter 'rt_ia3' added successfully.")
    assert _greedy(client, "rt_ia3") == _greedy(client, "ia3")
    assert "rt_ia3" in {m.id for m in client.models.list().data}
    assert _unload(server.url, "rt_ia3") == (
        200, "Success: LoRA adapter 'rt_ia3' removed successfully.")
    with pytest.raises(openai.NotFoundError):
        _greedy(client, "rt_ia3")
    _error(_unload(server.url, "rt_ia3"), 404, "rt_ia3")


def test_reload_under_same_name_serves_new_content(server: Any, client: Any, dirs: dict) -> None:
    assert _load(server.url, "swap", dirs["lora"])[0] == 200
    assert _greedy(client, "swap") == _greedy(client, "lora")
    assert _unload(server.url, "swap")[0] == 200
    assert _load(server.url, "swap", dirs["prefix"])[0] == 200
    assert _greedy(client, "swap") == _greedy(client, "prefix") != _greedy(client, "lora")
    assert _unload(server.url, "swap")[0] == 200


def test_unload_in_use_finishes_its_requests(server: Any, client: Any, dirs: dict) -> None:
    assert _load(server.url, "busy", dirs["bottleneck"])[0] == 200
    want = _greedy(client, "bottleneck", 40)
    stream = client.completions.create(model="busy", prompt="w60 w61 w62", max_tokens=40,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    parts, unloaded = [], {}
    for i, chunk in enumerate(stream):
        parts.append(chunk.choices[0].text)
        if i == 2:  # the engine held: the request is certainly still running
            with paused(server):
                t = threading.Thread(target=lambda: unloaded.update(r=_unload(server.url, "busy")))
                t.start()
                deadline = time.monotonic() + 60
                while server.state.engine.cache.lookup("busy") is not None:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                with pytest.raises(openai.NotFoundError):  # new requests: gone at once
                    _greedy(client, "busy")
            t.join(timeout=60)
    assert unloaded["r"][0] == 200 and "".join(parts) == want


def _foreign_adapter(tmp: Path) -> Path:
    """A LoRA for a bert model: another base."""
    kit = ak.AdapterKit(build("bert"))
    kit.add("bert_lora", ak.LoRA(r=2))
    kit.save("bert_lora", tmp / "bert_lora")
    return tmp / "bert_lora"


def test_bad_adapter_loads(server: Any, client: Any, dirs: dict, tmp_path: Path) -> None:
    _error(_load(server.url, "lora", dirs["lora2"]), 400, "already been loaded")
    _error(_load(server.url, MODEL_ID, dirs["lora2"]), 400, "base model")
    err = _error(_load(server.url, "foreign", _foreign_adapter(tmp_path)), 400, "does not fit")
    assert "bert" in err["message"] and "llama" in err["message"]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(dirs["lora"], corrupt)
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    _error(_load(server.url, "corrupt", corrupt), 400, "corrupt")
    _error(_load(server.url, "missing", tmp_path / "nowhere"), 400, "no adapter directory")
    _error(http(server.url + "/v1/load_lora_adapter", "POST", {"lora_name": "x"}), 400,
           "lora_path")
    names = {m.id for m in client.models.list().data}
    assert not names & {"foreign", "corrupt", "missing", "x"}
    assert _greedy(client, "lora")  # still serving


def test_bad_requests(server: Any, client: Any) -> None:
    url = server.url + "/v1/completions"
    _error(http(url, "POST", {"model": "nope", "prompt": "w1"}), 404, "`nope` does not exist")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1",
                              "adapters": [{"name": "nope"}]}), 404, "`nope`")
    _error(http(url, "POST", raw=b'{"model": "tiny", "prompt": '), 400)
    _error(http(url, "POST", {"model": MODEL_ID}), 400, "prompt")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1", "max_tokens": "many"}), 400,
           "max_tokens")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1", "max_tokens": 1000}), 400,
           "maximum context length is 256 tokens", "1001 tokens")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "", "max_tokens": 3}), 400, "empty")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": [], "max_tokens": 3}), 400, "empty")
    _error(http(server.url + "/v1/chat/completions", "POST",
                {"model": MODEL_ID, "messages": []}), 400, "empty")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1", "temperature": -1}), 400,
           "temperature")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1", "adapters": [
        {"name": "bottleneck", "weight": 0.5}]}), 400, "not additive")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1", "adapters": [
        {"name": "prefix"}, {"name": "prompt"}]}), 400, "at most one prompt/prefix")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1", "merged_adapters": {
        "ids": ["lora"], "merge_strategy": "ties"}}), 400, "merge_strategy")
    _error(http(url, "POST", {"model": MODEL_ID, "prompt": "w1",
                              "stream_options": {"include_usage": True}}), 400, "stream=True")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_ID, prompt="w1", max_tokens=1000)
    assert _greedy(client, MODEL_ID)  # the server keeps serving


def test_sources_go_through_the_resolver(server: Any, client: Any, dirs: dict) -> None:
    """A source URL resolves through adapterkit.io.resolve, as hub:// sources do."""
    from adapterkit.io.resolve import _SCHEMES, register_scheme

    register_scheme("testsrc", lambda rest, **_: Path(dirs[rest]))
    try:
        assert _load(server.url, "via_url", "testsrc://ia3")[0] == 200
        assert _greedy(client, "via_url") == _greedy(client, "ia3")
        cards = {m.id: m for m in client.models.list().data}
        assert cards["via_url"].root == "testsrc://ia3"
        assert _unload(server.url, "via_url")[0] == 200
        _error(_load(server.url, "bad_url", "nosuch://x"), 400, "unknown source scheme")
    finally:
        _SCHEMES.pop("testsrc", None)
