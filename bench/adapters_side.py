"""The suite's handle on AdapterHub's ``adapters`` library, which lives in its own virtual
environment (``make adapters-venv``; ``ADAPTERS_PYTHON`` names another interpreter).

:class:`AdaptersSide` starts bench/adapters_worker.py under that interpreter and turns its cases
into callables that bench/common.py's ``interleaved`` times like any other: each call is one
request/reply over a pipe (its cost is measured by the ``ping`` case and reported).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"


def find_python() -> tuple[str | None, str]:
    """The interpreter with ``adapters`` installed, or None and the reason it is unusable."""
    python = os.environ.get("ADAPTERS_PYTHON") or str(DEFAULT_PYTHON)
    if not Path(python).is_file():
        return None, (f"no interpreter at {python}; run `make adapters-venv` (or set "
                      "ADAPTERS_PYTHON) to compare with AdapterHub's adapters library")
    probe = subprocess.run([python, "-c", "import adapters; print(adapters.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"{python} cannot import adapters: {probe.stderr.strip()[-300:]}"
    return python, probe.stdout.strip()


class AdaptersSide:
    """One worker process running the ``adapters`` cases on the same model and batch."""

    def __init__(self, python: str, model_dir: str, batch: dict[str, torch.Tensor],
                 labels: torch.Tensor, threads: int) -> None:
        from safetensors.torch import save_file

        self.file = Path(tempfile.mkdtemp()) / "batch.safetensors"
        save_file({**{k: v.contiguous() for k, v in batch.items()}, "labels": labels}, self.file)
        self.setup = {"op": "setup", "model": model_dir, "batch": str(self.file),
                      "threads": threads}
        self.proc = subprocess.Popen([python, str(HERE / "adapters_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.versions = self.request(self.setup)

    def request(self, req: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printed to stdout
            if not reply["ok"]:
                raise RuntimeError(f"adapters worker: {reply['error']}")
            return reply["value"]
        raise RuntimeError(f"adapters worker exited with {self.proc.wait()}")

    def case(self, name: str) -> Callable[[], None]:
        return lambda: self.request({"op": "run", "case": name})

    def ping(self) -> Callable[[], None]:
        return lambda: self.request({"op": "ping"})

    def counts(self) -> dict[str, int]:
        return self.request({"op": "counts"})

    def memory(self, variant: str) -> float:
        """Peak RSS growth of ``variant``'s training steps, in a fresh worker."""
        fresh = AdaptersSide.__new__(AdaptersSide)
        fresh.proc = subprocess.Popen(self.proc.args, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, bufsize=1)
        try:
            fresh.request(self.setup)
            return float(fresh.request({"op": "memory", "variant": variant}))
        finally:
            fresh.close()

    def loading_cases(self) -> dict[str, Callable[[], None]]:
        cases = {k: self.case(k) for k in ("adapters 32nd", "adapters 1st", "adapters model copy")}
        return {**cases, "adapters ping": self.ping()}

    @staticmethod
    def loading_medians(med: dict[str, float]) -> dict[str, float]:
        """The 1st load without its model copy, the 32nd without its pipe round trip."""
        med["adapters 1st"] = max(med["adapters 1st"] - med.pop("adapters model copy"), 0.0)
        med["adapters 32nd"] = max(med["adapters 32nd"] - med["adapters ping"], 0.0)
        return med

    def forward(self, base: torch.nn.Module, batch: dict[str, torch.Tensor],
                rounds: int) -> dict[str, float]:
        """Forward of ``batch``: base, LoRA unmerged and merged, adapterkit's and adapters'."""
        from common import interleaved

        import adapterkit as ak

        unmerged, merged = copy.deepcopy(base), copy.deepcopy(base)
        for m in (unmerged, merged):
            kit = ak.AdapterKit(m)
            kit.add("a", ak.LoRA(r=8, alpha=16))
            kit.activate("a")
        kit.merge("a")

        def fwd(model: torch.nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.no_grad():
                    model(**batch)
            return run
        cases = {"ours base": fwd(base), "ours LoRA unmerged": fwd(unmerged),
                 "ours LoRA merged": fwd(merged)}
        cases.update({k: self.case(k) for k in ("adapters base", "adapters LoRA unmerged",
                                                "adapters LoRA merged")})
        return interleaved(cases, rounds=2 * rounds, warmup=2)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def adapters_ratios(train_s: dict[str, float], memory: dict[str, float], counts: dict[str, int],
                    load_s: dict[str, float], fwd_a: dict[str, float]) -> dict[str, float]:
    """adapterkit / adapters for every measure both have."""
    return {
        "LoRA training step vs adapters": train_s["ours LoRA"] / train_s["adapters LoRA"],
        "Bottleneck training step vs adapters":
            train_s["ours Bottleneck"] / train_s["adapters Bottleneck"],
        "LoRA training peak RSS growth vs adapters": memory["ours LoRA"] / memory["adapters LoRA"],
        "unmerged forward vs adapters": fwd_a["ours LoRA unmerged"] / fwd_a["adapters LoRA unmerged"],
        "unmerged forward (each vs own base) vs adapters":
            (fwd_a["ours LoRA unmerged"] / fwd_a["ours base"])
            / (fwd_a["adapters LoRA unmerged"] / fwd_a["adapters base"]),
        "load 32nd adapter vs adapters": load_s["ours 32nd"] / load_s["adapters 32nd"],
        "trainable params (LoRA) vs adapters": counts["ours LoRA"] / counts["adapters LoRA"],
        "trainable params (Bottleneck) vs adapters":
            counts["ours Bottleneck"] / counts["adapters Bottleneck"],
    }
