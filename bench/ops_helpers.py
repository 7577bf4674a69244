"""Plumbing of bench/operations.py: settings from the environment, cached training and evaluation
of adapters on MiniLM, file sizes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import adapterkit as ak
from adapterkit.core.checkpoint import WEIGHTS_FILE, read_safetensors
from adapterkit.train.data import Example, get_task
from adapterkit.train.loop import TrainArgs, accuracy, predict, train_adapter
from adapterkit.train.models import load_classifier

ROOT = Path(__file__).resolve().parents[1]


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_list(name: str, default: str, cast: Callable[[str], Any] = float) -> tuple[Any, ...]:
    """A comma-separated environment variable as a tuple (empty items dropped)."""
    return tuple(cast(x) for x in os.environ.get(name, default).split(",") if x.strip())


@dataclass(frozen=True)
class Settings:
    """Step counts and limits (environment variables in brackets)."""

    steps: int = int(_env("OPS_STEPS", 200))  # SST-2 adapters, fp32 and QAT [OPS_STEPS]
    ft_steps: int = int(_env("OPS_FT_STEPS", 150))  # full fine-tune of MiniLM on SST-2
    rte_steps: int = int(_env("OPS_RTE_STEPS", 200))  # RTE LoRA / EigenLoRA
    batch: int = int(_env("OPS_BATCH", 32))
    eval_limit: int = int(_env("OPS_EVAL_LIMIT", 872))  # SST-2 dev examples (872 = all)
    rte_eval_limit: int = int(_env("OPS_RTE_EVAL_LIMIT", 277))  # RTE dev examples (277 = all)
    rte_max_length: int = int(_env("OPS_RTE_MAXLEN", 128))
    lr: float = _env("OPS_LR", 2e-3)  # SST-2 and RTE adapters
    ft_lr: float = _env("OPS_FT_LR", 1e-4)
    eigen_lrs: tuple[float, ...] = _env_list("OPS_EIGEN_LRS", "0.005,0.02")  # EigenLoRA, a run each
    seed: int = int(_env("OPS_SEED", 0))
    qat_lr_factors: tuple[float, ...] = _env_list("OPS_QAT_LR_FACTORS", "1,2")  # 1-bit QAT lr / lr
    more_seeds: tuple[int, ...] = _env_list("OPS_MORE_SEEDS", "1,2", int)  # fp32 vs QAT again ("": none)
    runs: str = os.environ.get("OPS_RUNS", str(ROOT / "runs" / "operations"))

    def max_length(self, task: str) -> int:
        return self.rte_max_length if task == "rte" else 64

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Bench:
    """Data, caches and timing shared by the parts of the benchmark."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.runs = Path(s.runs)
        self.runs.mkdir(parents=True, exist_ok=True)
        self._data: dict[tuple[str, str], list[Example]] = {}
        self._evals_path = self.runs / "evals.json"
        self._evals = json.loads(self._evals_path.read_text()) if self._evals_path.is_file() else {}
        self.train_seconds: dict[str, float] = {}
        self.train_threads: dict[str, int | None] = {}

    def data(self, task: str, split: str) -> list[Example]:
        if (task, split) not in self._data:
            limits = {"sst2": self.s.eval_limit, "rte": self.s.rte_eval_limit}
            limit = limits[task] if split == "dev" else None
            self._data[task, split] = get_task(task).split(split, limit=limit)
        return self._data[task, split]

    def model(self, seed: int = 12345) -> tuple[Any, Any]:
        return load_classifier("minilm", 2, seed=seed)

    def targs(self, task: str, steps: int, lr: float, seed: int | None = None) -> TrainArgs:
        return TrainArgs(steps=steps, batch_size=self.s.batch, max_length=self.s.max_length(task),
                         lr=lr, seed=self.s.seed if seed is None else seed, progress=False)

    def train(self, key: str, task: str, steps: int, lr: float,
              setup: Callable[[ak.AdapterKit], str], seed: int | None = None) -> Path:
        """Train (or reuse) the adapter ``setup`` adds to a fresh MiniLM; returns its directory.
        ``seed`` (default: the settings' one) seeds the head, the adapter's init and the data order."""
        out = self.runs / key
        meta = out / "bench.json"
        if meta.is_file():
            saved = json.loads(meta.read_text())
            self.train_seconds[key], self.train_threads[key] = saved["train_seconds"], saved.get("threads")
            return out
        seed = self.s.seed if seed is None else seed
        model, tok = self.model(seed=seed)
        kit = ak.AdapterKit(model)
        name = setup(kit)
        print(f"training {key}: {steps} steps", flush=True)
        result = train_adapter(kit, name, tok, self.data(task, "train"),
                               self.targs(task, steps, lr, seed))
        kit.save(name, out)
        self.train_seconds[key], self.train_threads[key] = result.seconds, torch.get_num_threads()
        meta.write_text(json.dumps({"train_seconds": result.seconds, "threads": torch.get_num_threads(),
                                    "steps": steps,
                                    "final_loss": result.losses[-1]}))
        return out

    def accuracy(self, model: Any, tok: Any, task: str) -> float:
        dev = self.data(task, "dev")
        return accuracy(predict(model, tok, dev, self.s.max_length(task)), dev)

    def cached(self, key: str, label: str, compute: Callable[[], float]) -> float:
        """``compute()`` once per key, kept in runs/operations/evals.json."""
        if key not in self._evals:
            start = time.perf_counter()
            self._evals[key] = compute()
            print(f"  {label}: {self._evals[key]:.4f} ({time.perf_counter() - start:.0f}s)",
                  flush=True)
            self._evals_path.write_text(json.dumps(self._evals, indent=1))
        return self._evals[key]

    def evaluate(self, directory: Path, task: str) -> float:
        """Dev accuracy of a saved adapter (with its saved head) on a fresh MiniLM; cached."""
        weights = Path(directory) / WEIGHTS_FILE
        limit = self.s.eval_limit if task == "sst2" else self.s.rte_eval_limit
        key = f"{directory}|{task}|{limit}|{weights.stat().st_mtime_ns}"

        def compute() -> float:
            model, tok = self.model()
            kit = ak.AdapterKit(model)
            kit.activate(kit.load(directory))
            return self.accuracy(model, tok, task)

        return self.cached(key, f"{Path(directory).name} on {task}", compute)


def file_bytes(directory: Path) -> int:
    return (Path(directory) / WEIGHTS_FILE).stat().st_size


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file()
               and p.name != "bench.json")


def head_of(directory: Path) -> dict[str, torch.Tensor]:
    """The saved classifier head of an adapter, by parameter name."""
    tensors = read_safetensors(Path(directory) / WEIGHTS_FILE)
    return {k.removeprefix("head::classifier."): t for k, t in tensors.items()
            if k.startswith("head::classifier.")}


def set_head(model: Any, head: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, t in head.items():
            getattr(model.classifier, name).copy_(t)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"
