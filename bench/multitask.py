"""Multi-task quality of adapters that choose adapters, on MiniLM (all-MiniLM-L6-v2) over SST-2,
RTE, MRPC and STS-B (GLUE dev sets, ``../shared/data/glue`` or ``$ADAPTERKIT_GLUE``).

Rows: single-task LoRAs; their uniform Average; AdapterFusion over them; a Mixture whose
sequence router trains over the four frozen LoRAs on mixed data (``MT_TOKEN=1`` adds one with a
token router); a Mixture whose experts and router train jointly; Arrow over the four LoRAs (no
task ids, no training); Poly/MHR and a HyperAdapter trained multi-task (with task ids). One
budget for all (``Budget``). Seed 0 runs the rows of the goals' comparisons, seeds 1 and 2
run those that seed 0 puts less than 2 points apart, then seed 0 runs the other rows
(``MT_SEEDS=0,1,2`` runs every row for each seed listed, or the rows in ``MT_ROWS=a,b``: a
second process can fill the cache beside the first). Trained adapters, heads and results are cached under
``runs/multitask/<budget>/`` (``MT_RUNS``), so an interrupted run resumes. Writes the table into
docs/composition.md (``MT_DOC``) and bench/results/multitask.json. ``MT_STEPS`` sets the steps
per task and ``MT_DEV_LIMIT`` evaluates on the first N dev examples of each task (none are
selected by score); both go into the cache folder's name and the table's header.

    MT_STEPS=30 MT_DEV_LIMIT=200 python bench/multitask.py   # BENCH_THREADS (default 2): threads
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_threads, write
from multitask_data import TASKS, Budget, MultiTask, evaluate, load_tasks, train
from multitask_doc import render

import adapterkit as ak

ROOT = Path(__file__).resolve().parents[1]
LORAS = tuple(f"lora_{t}" for t in TASKS)
SETUPS = {
    "poly": lambda: ak.Poly(n_skills=3, n_tasks=4, n_splits=4, r=8, alpha=16),
    "hyper": lambda: ak.HyperAdapter(n_tasks=4, task_dim=32, hidden=64, r=8, alpha=16),
}


class Context:
    """One seed's model, data and cache directory; ``single_heads`` are the heads trained with
    the single-task LoRAs (the rows over frozen LoRAs use them, frozen)."""

    def __init__(self, seed: int, budget: Budget, data: dict[str, Any], tokenizer: Any,
                 runs: Path) -> None:
        from transformers import AutoModel

        from adapterkit.train.models import model_dir

        self.seed, self.budget, self.data, self.tok = seed, budget, data, tokenizer
        self.dir = runs / f"seed{seed}"
        torch.manual_seed(seed)
        self.model = MultiTask(AutoModel.from_pretrained(model_dir("minilm")), seed)
        self.kit = self.model.kit
        self.single_heads: dict[str, torch.Tensor] = {}

    def params(self, names: tuple[str, ...]) -> int:
        return sum(p.numel() for n in names for p in self.kit.parameters(n))

    def fresh_heads(self) -> list[torch.nn.Parameter]:
        torch.manual_seed(self.seed + 1000)
        for head in self.model.heads.values():
            head.reset_parameters()
        params = list(self.model.heads.parameters())
        for p in params:
            p.requires_grad_(True)
        return params

    def restore_heads(self) -> None:
        self.model.heads.load_state_dict(self.single_heads)
        for p in self.model.heads.parameters():
            p.requires_grad_(False)

    def train(self, params: list[torch.nn.Parameter], lr: float | None = None) -> float:
        return train(self.model, params, self.tok, self.data, TASKS, self.budget.mixed_steps,
                     lr or self.budget.lr, self.budget, self.seed)

    def scores(self, setup: Callable[[str], None]) -> dict[str, dict[str, float]]:
        out = {}
        for t in TASKS:
            setup(t)
            out[t] = evaluate(self.model, self.tok, self.data, t, self.budget)
        return out


def ensure_single(ctx: Context) -> dict[str, Any] | None:
    """Train (or load) the four single-task LoRAs and their heads; the result row when trained
    now, None when loaded."""
    d = ctx.dir / "single"
    # a result without its adapters or heads (a cache copied without weights) trains them again
    done = (d / "result.json").is_file() and (d / "heads.safetensors").is_file() and all(
        (d / name / "adapter_config.json").is_file() for name in LORAS)
    seconds = 0.0
    for t, name in zip(TASKS, LORAS):
        if done:
            ctx.kit.load(d / name)
            continue
        ctx.kit.add(name, ak.LoRA(r=8, alpha=16))
        params = ctx.kit.train(name) + list(ctx.model.heads[t].parameters())
        seconds += train(ctx.model, params, ctx.tok, ctx.data, (t,), ctx.budget.steps_per_task,
                         ctx.budget.lr, ctx.budget, ctx.seed)
        ctx.kit.save(name, d / name)
    if done:
        ctx.model.heads.load_state_dict(load_file(str(d / "heads.safetensors")))
    else:
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ctx.model.heads.state_dict().items()},
                  str(d / "heads.safetensors"))
    ctx.single_heads = {k: v.clone() for k, v in ctx.model.heads.state_dict().items()}
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    if done:
        return None
    scores = ctx.scores(lambda t: ctx.kit.activate(f"lora_{t}"))
    return {"scores": scores, "params": ctx.params(LORAS), "train_seconds": seconds}


def _over_loras(comp: Any) -> Callable[[Context], dict[str, Any]]:
    def row(ctx: Context) -> dict[str, Any]:
        ctx.kit.activate(comp)
        return {"scores": ctx.scores(lambda t: None), "params": ctx.params(LORAS),
                "train_seconds": 0.0}
    return row


def _router(router: str) -> Callable[[Context], dict[str, Any]]:
    def row(ctx: Context) -> dict[str, Any]:
        mix = ak.Mixture(*LORAS, router=router, name=f"mix_{router}")
        seconds = ctx.train(ctx.kit.train_router(mix))
        return {"scores": ctx.scores(lambda t: None), "train_seconds": seconds,
                "params": ctx.params((*LORAS, mix.name))}
    return row


def fuse(ctx: Context) -> dict[str, Any]:
    seconds = ctx.train(ctx.kit.train_fusion(ak.Fuse(*LORAS, name="fuse")), ctx.budget.fusion_lr)
    return {"scores": ctx.scores(lambda t: None), "train_seconds": seconds,
            "params": ctx.params((*LORAS, "fuse"))}


def joint(ctx: Context) -> dict[str, Any]:
    experts = tuple(f"joint_{t}" for t in TASKS)
    for name in experts:
        ctx.kit.add(name, ak.LoRA(r=8, alpha=16))
    mix = ak.Mixture(*experts, router="sequence", name="mix_joint")
    seconds = ctx.train(ctx.kit.train_router(mix, experts=True) + ctx.fresh_heads())
    out = {"scores": ctx.scores(lambda t: None), "train_seconds": seconds,
           "params": ctx.params((*experts, mix.name))}
    ctx.restore_heads()
    return out


def _task_ids(kind: str) -> Callable[[Context], dict[str, Any]]:
    def row(ctx: Context) -> dict[str, Any]:
        ctx.kit.add(kind, SETUPS[kind]())
        ctx.model.with_ids = True
        lr = ctx.budget.hyper_lr if kind == "hyper" else ctx.budget.lr
        try:  # AdamW parameter groups: the adapter at its lr, the heads at the common one
            groups = [{"params": ctx.kit.train(kind), "lr": lr}, {"params": ctx.fresh_heads()}]
            seconds = ctx.train(groups)  # type: ignore[arg-type]
            out = {"scores": ctx.scores(lambda t: None), "train_seconds": seconds,
                   "params": ctx.params((kind,))}
        finally:
            ctx.model.with_ids = False
            ctx.restore_heads()
        return out
    return row


ROWS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "average": ("uniform Average of the 4 LoRAs", _over_loras(ak.Average(*LORAS))),
    "arrow": ("Arrow over the 4 LoRAs (top-2, T=1), no training", _over_loras(
        ak.Arrow(*LORAS, top_k=2, temperature=1.0))),
    "mixture_sequence": ("Mixture, sequence router trained over the 4 frozen LoRAs",
                         _router("sequence")),
    "poly": ("Poly/MHR (3 skills, 4 heads, r=8), multi-task", _task_ids("poly")),
    "hyper": ("HyperAdapter (LoRA r=8, task/layer dim 32), multi-task", _task_ids("hyper")),
    "mixture_joint": ("Mixture, 4 LoRA experts + sequence router trained jointly", joint),
    "fuse": ("Fuse (AdapterFusion) over the 4 LoRAs, fusion trained on mixed data", fuse),
}
if os.environ.get("MT_TOKEN") == "1":  # one more run per seed: off by default
    ROWS["mixture_token"] = ("Mixture, token router trained over the 4 frozen LoRAs",
                             _router("token"))
#: the comparisons of the goals: both rows get 3 seeds where seed 0 puts them < 2 points apart
PAIRS = (("mixture_sequence", "single"), ("mixture_token", "single"), ("arrow", "average"),
         ("poly", "single"), ("hyper", "single"))


def run_seed(seed: int, budget: Budget, data: dict[str, Any], tok: Any, runs: Path,
             only: set[str] | None = None) -> None:
    """Every row (or the rows in ``only``) for ``seed``, skipping those already cached."""
    if only is not None and not only:
        return
    ctx = Context(seed, budget, data, tok, runs)
    start = time.perf_counter()
    single = ensure_single(ctx)
    if single is not None:
        (ctx.dir / "single" / "result.json").write_text(json.dumps(single, indent=2))
        print(f"seed {seed} single: {single['train_seconds']:.0f} s training, "
              f"{time.perf_counter() - start:.0f} s so far", flush=True)
    for key, (_, fn) in ROWS.items():
        path = ctx.dir / key / "result.json"
        if path.is_file() or (only is not None and key not in only):
            continue
        before = set(ctx.kit.names)
        result = fn(ctx)
        ctx.kit.activate(None)
        for name in [n for n in ctx.kit.names if n not in before][::-1]:
            ctx.kit.remove(name)  # routers and fusion layers first, then their experts
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"seed {seed} {key}: mean {sum(s['score'] for s in result['scores'].values()) / 4:.2f}"
              f" ({time.perf_counter() - start:.0f} s so far)", flush=True)


def collect(runs: Path, seeds: list[int]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for key in ("single", *ROWS):
        for s in seeds:
            path = runs / f"seed{s}" / key / "result.json"
            if path.is_file():
                out.setdefault(key, {})[s] = json.loads(path.read_text())
    return out


def close_rows(runs: Path) -> set[str]:
    """The rows of the goal comparisons whose seed-0 means are under 2 points apart."""
    first = collect(runs, [0])
    mean = {k: sum(r[0]["scores"][t]["score"] for t in TASKS) / len(TASKS) for k, r in first.items()}
    return {k for a, b in PAIRS if a in mean and b in mean and abs(mean[a] - mean[b]) < 2.0
            for k in (a, b)}


def main() -> int:
    from transformers import AutoTokenizer

    from adapterkit.train.models import model_dir

    threads = pin_threads(int(os.environ.get("BENCH_THREADS", "2")))
    seeds_env = os.environ.get("MT_SEEDS", "auto")
    budget = Budget(steps_per_task=int(os.environ.get("MT_STEPS", Budget.steps_per_task)))
    limit = int(os.environ["MT_DEV_LIMIT"]) if "MT_DEV_LIMIT" in os.environ else None
    runs = Path(os.environ.get("MT_RUNS", ROOT / "runs" / "multitask")) / (
        budget.tag + (f"-dev{limit}" if limit else ""))
    data = load_tasks(limit)
    tok = AutoTokenizer.from_pretrained(model_dir("minilm"))
    if seeds_env == "auto":  # seed 0 for all; seeds 1 and 2 where a comparison is close
        run_seed(0, budget, data, tok, runs, {k for pair in PAIRS for k in pair})
        close = close_rows(runs)
        for seed in (1, 2):
            run_seed(seed, budget, data, tok, runs, close)
        run_seed(0, budget, data, tok, runs)  # the rows outside the goals last
        seeds = [0, 1, 2]
    else:
        seeds = [int(s) for s in seeds_env.split(",")]
        rows = ({r for r in os.environ["MT_ROWS"].split(",") if r} if "MT_ROWS" in os.environ
                else None)  # MT_ROWS= (empty): no runs, the table from the cache
        for seed in seeds:
            run_seed(seed, budget, data, tok, runs, rows)
    results = collect(runs, seeds)
    labels = {"single": "single-task LoRAs (r=8 on q, v; one per task)",
              **{k: v[0] for k, v in ROWS.items()}}
    doc = Path(os.environ.get("MT_DOC", ROOT / "docs" / "composition.md"))
    sizes = {t: len(data[t].dev) for t in TASKS}
    doc.write_text(render(doc.read_text(), results, labels, budget, threads, sizes, limit))
    write("multitask", {"budget": budget.__dict__, "dev_limit": limit, "dev_sizes": sizes,
                        "seeds": seeds, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
