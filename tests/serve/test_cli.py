"""``adapterkit serve`` from the shell: a subprocess on a free port of 127.0.0.1, answering the
openai client; and its option parsing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterkit.cli.serve import parse_adapter, parse_size
from adapterkit.errors import AdapterError

from .conftest import client_for, http


def test_options() -> None:
    assert parse_size("1000") == 1000 and parse_size("64MB") == 64 * 10**6
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_adapter("a=dir/x") == ("a", "dir/x")
    assert parse_adapter("a=hub://org/x@v1") == ("a", "hub://org/x@v1")
    for bad in ("a", "=x", "a="):
        with pytest.raises(AdapterError, match="NAME=SOURCE"):
            parse_adapter(bad)
    with pytest.raises(AdapterError, match="500MB"):
        parse_size("lots")


def test_serve_command(dirs: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapterkit.cli.main", "serve", "--model", str(dirs["model"]),
         "--adapter", f"lo={dirs['lora']}", "--adapter", f"pre={dirs['prefix']}",
         "--port", str(port), "--max-num-seqs", "4"], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if http(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        client = client_for(url)
        assert {m.id for m in client.models.list().data} == {str(dirs["model"]), "lo", "pre"}
        r = client.completions.create(model="pre", prompt="w1 w2", max_tokens=5,
                                      extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5
        assert http(url + "/v1/load_lora_adapter", "POST",
                    {"lora_name": "x", "lora_path": str(dirs["ia3"])})[0] == 404  # flag off
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_command_line(dirs: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "adapterkit.cli.main", "serve", "--model",
                           str(dirs["model"]), "--adapter", "oops"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "NAME=SOURCE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "adapterkit.cli.main", "serve", "--model",
                           str(dirs["model"]), "--adapter", f"a={dirs['model']}/nowhere"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no adapter directory" in proc.stderr
