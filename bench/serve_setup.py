"""What bench/serve.py and its vLLM side share: the adapters they serve (made once under
``SERVE_BENCH_DIR``), the workload, and server subprocesses on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch
from serve_load import Req

HERE = Path(__file__).resolve().parent
THREADS = int(os.environ.get("SERVE_BENCH_THREADS", "2"))
SCALE = float(os.environ.get("SERVE_BENCH_SCALE", "1"))
PROMPT, OUTPUT = 128, 64


def n(count: int) -> int:
    return max(1, round(count * SCALE))


def prepare(root: Path) -> dict[str, Any]:
    """128 LoRA (r=8 on q and v), 4 IA3 and 4 bottleneck adapters for SmolLM2, random and small,
    in adapterkit's format, and the 32 first LoRA adapters again in PEFT's."""
    import transformers as T

    import adapterkit as ak
    from adapterkit.train.smollm2 import smollm2_dir

    stamp = root / "done.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())
    model = T.AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    kit = ak.AdapterKit(model)
    g = torch.Generator().manual_seed(0)
    names: dict[str, list[str]] = {"lora": [], "ia3": [], "bottleneck": []}
    configs = [("lora", f"l{i:03d}", ak.LoRA(r=8, targets=("attn.q", "attn.v"))) for i in range(128)]
    configs += [("ia3", f"i{i}", ak.IA3()) for i in range(4)]
    configs += [("bottleneck", f"b{i}", ak.Bottleneck(reduction=16)) for i in range(4)]
    for kind, name, config in configs:
        kit.add(name, config)
        with torch.no_grad():
            for p in kit.parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        kit.save(name, root / name)
        if kind == "lora" and len(names["lora"]) < 32:
            kit.save(name, root / "peft" / name, format="peft")
        kit.remove(name)
        names[kind].append(name)
    bytes_per_lora = sum(f.stat().st_size for f in (root / "l000").glob("*.safetensors"))
    info = {"names": names, "lora_bytes": bytes_per_lora, "vocab": model.config.vocab_size,
            "model_dir": str(smollm2_dir())}
    stamp.write_text(json.dumps(info))
    return info


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A server subprocess on 127.0.0.1, in its own process group (so that its children stop
    with it), its output in a log file; the constructor returns once ``/health`` answers 200."""

    live: list[Server] = []  # every server started and not yet stopped

    def __init__(self, argv: list[str], label: str, env: dict[str, str] | None = None,
                 port_flag: str = "--port") -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.label = label
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **(env or {})}
        fd, self.log = tempfile.mkstemp(prefix=f"serve-bench-{label}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen([*argv, port_flag, str(self.port)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        Server.live.append(self)
        self.started = time.monotonic()
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - self.started

    def _wait(self) -> None:
        deadline = time.monotonic() + 900
        while True:
            if self.proc.poll() is not None:
                tail = Path(self.log).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.label} exited ({self.proc.returncode}): {tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not start; log {self.log}")
            time.sleep(1)

    def stop(self) -> None:
        if self in Server.live:
            Server.live.remove(self)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # children of a server that exited first
            os.killpg(self.proc.pid, signal.SIGKILL)

    @classmethod
    def stop_all(cls) -> None:
        for srv in list(cls.live):
            srv.stop()


def adapterkit_server(info: dict, root: Path, loras: int, extra: list[str] = (),
                      label: str = "adapterkit", more: list[str] = ()) -> Server:
    """``adapterkit serve --model smollm2`` with the first ``loras`` LoRA adapters, the IA3 and
    bottleneck ones and the ``more`` named ones of ``root``."""
    names = info["names"]["lora"][:loras] + info["names"]["ia3"] + info["names"]["bottleneck"]
    names += list(more)
    argv = [sys.executable, "-m", "adapterkit.cli.main", "serve", "--model", "smollm2",
            "--max-num-seqs", "32", "--threads", str(THREADS), *extra]
    for name in names:
        argv += ["--adapter", f"{name}={root / name}"]
    return Server(argv, label)


def requests(info: dict, models: list[str], count: int, seed: int, tag: str = "",
             lengths: tuple[int, int] | None = None,
             extra: dict[str, Any] | None = None) -> list[Req]:
    """``count`` requests of PROMPT random token ids (the same for the same seed), for the
    ``models`` in turn, each asking for OUTPUT tokens (or a length drawn from ``lengths``)."""
    rng = random.Random(seed)
    vocab = info["vocab"]
    out = []
    for i in range(count):
        prompt = [rng.randrange(100, vocab - 100) for _ in range(PROMPT)]
        length = rng.randint(*lengths) if lengths else OUTPUT
        out.append(Req(models[i % len(models)], prompt, length, dict(extra or {}), tag))
    return out
