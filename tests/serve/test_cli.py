"""``adapterkit serve`` from the shell: a subprocess on a free port of 127.0.0.1, answering the
openai client; and its option parsing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapterkit.cli.main import build_parser
from adapterkit.cli.serve import OMP_VARIABLE, OPT_OUT, parse_adapter, parse_size, restart_argv
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(dirs: dict[str, Path], env: dict[str, str], *args: str) -> Iterator[tuple[str, int]]:
    """``adapterkit serve`` on the tiny model as a subprocess: (its URL, its pid) once healthy."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapterkit.cli.main", "serve", "--model", str(dirs["model"]),
         "--port", str(port), "--max-num-seqs", "4", *args], stderr=subprocess.PIPE, env=env)
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
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _environ(pid: int) -> dict[str, str]:
    """The environment of process ``pid`` as it runs now (after any exec)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if e)


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (OMP_VARIABLE, OPT_OUT)}
    return {**env, **values}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/PID/environ")
def test_serve_command(dirs: dict[str, Path]) -> None:
    with _server(dirs, _env(), "--adapter", f"lo={dirs['lora']}",
                 "--adapter", f"pre={dirs['prefix']}") as (url, pid):
        assert _environ(pid)[OMP_VARIABLE] == "PASSIVE"  # restarted with it
        client = client_for(url)
        assert {m.id for m in client.models.list().data} == {str(dirs["model"]), "lo", "pre"}
        r = client.completions.create(model="pre", prompt="w1 w2", max_tokens=5,
                                      extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5
        assert http(url + "/v1/load_lora_adapter", "POST",
                    {"lora_name": "x", "lora_path": str(dirs["ia3"])})[0] == 404  # flag off


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/PID/environ")
def test_omp_wait_policy_the_user_set_is_kept(dirs: dict[str, Path]) -> None:
    with _server(dirs, _env(OMP_WAIT_POLICY="ACTIVE")) as (_, pid):
        assert _environ(pid)[OMP_VARIABLE] == "ACTIVE"
    with _server(dirs, _env(), "--keep-omp-wait-policy") as (_, pid):
        assert OMP_VARIABLE not in _environ(pid)
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert restart_argv(args, {}) is None  # main() called in-process: never restarts
    args.process_argv = ["serve", "--model", "m"]
    assert restart_argv(args, {})[-3:] == ["serve", "--model", "m"]
    assert restart_argv(args, {OPT_OUT: "0"}) is None


def test_bad_command_line(dirs: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "adapterkit.cli.main", "serve", "--model",
                           str(dirs["model"]), "--adapter", "oops"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "NAME=SOURCE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "adapterkit.cli.main", "serve", "--model",
                           str(dirs["model"]), "--adapter", f"a={dirs['model']}/nowhere"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no adapter directory" in proc.stderr
