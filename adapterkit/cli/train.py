"""``adapterkit train`` and ``adapterkit eval``: classification and regression on a sequence
classifier (GLUE tasks or any data file with ``--text-columns`` and ``--label-column``), and
causal-LM SFT (``--format``; see :mod:`.sft`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import AdapterError

GLUE_EXTRA = ("mrpc", "stsb")


def method_config(args: argparse.Namespace) -> Any:
    from .. import Bottleneck, LoRA

    if args.config:
        return _config_from_json(args.config)
    if args.method == "lora":
        return LoRA(r=args.r, alpha=args.alpha, targets=tuple(args.targets), dropout=args.dropout)
    return Bottleneck(reduction=args.reduction, placement=args.placement, mode=args.mode)


def _config_from_json(text: str) -> Any:
    """A method config from JSON text, or from a file when ``text`` starts with ``@``."""
    from ..errors import ConfigError
    from ..methods.configs import config_from_dict

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ConfigError(f"--config {text}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not valid JSON ({exc}): {text[:200]!r}") from None
    return config_from_dict(data)


def _prepare(kit: Any, name: str, tok: Any, train: Any, targs: Any) -> None:
    """Data-dependent initialisation some methods need before training (SparseAdapter's SNIP
    pruning, on 4 training batches)."""
    import torch

    from ..methods.sparse_adapter import SparseAdapter, snip_prune
    from ..train.loop import encode

    config = kit.record(name).config
    if isinstance(config, SparseAdapter) and config.criterion == "snip":
        batches = []
        for i in range(4):
            chunk = train[i * targs.batch_size:(i + 1) * targs.batch_size]
            enc = encode(tok, chunk, targs.max_length)
            batches.append({**enc, "labels": torch.tensor([ex.label for ex in chunk])})
        kit.train(name, train_also=("classifier",))
        snip_prune(kit, name, batches)


def _counts(kit: Any, name: str, head: str | None = "classifier") -> dict[str, int]:
    """Trainable parameters of the adapter (for pruned methods those that can be nonzero; each
    shared tensor once), of the head, in all, and the frozen base's."""
    adapter, seen = 0, set()
    for module in kit.record(name).modules.values():
        if hasattr(module, "nonzero_count"):
            adapter += module.nonzero_count()
            continue
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                adapter += p.numel()
    heads = sum(p.numel() for p in kit.model.get_submodule(head).parameters()) if head else 0
    total = sum(p.numel() for p in kit.model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in kit.model.named_parameters() if not p.requires_grad)
    return {"adapter_params": adapter, "head_params": heads, "trainable_params": total,
            "base_params": base}


def load_task(args: argparse.Namespace) -> Any:
    """The classification or regression task of ``--data``/``--task``: a
    :class:`~adapterkit.train.datasets.Table`, or a TSV ``Task`` for sst2, rte and TSV
    directories (the original reader)."""
    from ..train.data import get_task, glue_dir
    from ..train.datasets import TableSpec, glue_table, read_table

    if args.data:
        if not args.text_columns or not args.label_column:
            raise AdapterError("--data for classification or regression needs --text-columns "
                               "and --label-column (or --format for causal-LM SFT)")
        spec = TableSpec(tuple(args.text_columns), args.label_column, None)
        return read_table(args.data, args.eval_data, spec, regression=args.regression,
                          limit=args.eval_limit)
    if args.task in GLUE_EXTRA:
        return glue_table(args.task, glue_dir(), limit=args.eval_limit)
    return get_task(args.task)


def _splits(task: Any, limit: int | None) -> tuple[Any, Any, int, tuple[str, ...]]:
    """(train, dev, number of model outputs, metric names) of a Task or a Table."""
    from ..train.datasets import Table

    if isinstance(task, Table):
        return task.train, task.dev, max(len(task.labels), 1), task.metric_names
    return task.split("train"), task.split("dev", limit=limit), len(task.labels), ("accuracy",)


def _evaluate(model: Any, tok: Any, dev: Any, max_length: int, metrics: tuple[str, ...],
              regression: bool) -> dict[str, float]:
    from ..train.loop import predict, predict_values
    from ..train.metrics import compute

    gold = [ex.label for ex in dev]
    if regression:
        return compute(metrics, predict_values(model, tok, dev, max_length, show=True), gold)
    return compute(metrics, predict(model, tok, dev, max_length, show=True), gold)


def cmd_train(args: argparse.Namespace) -> int:
    if args.format is not None or args.model == "smollm2":
        from .sft import cmd_sft

        return cmd_sft(args)
    from .. import AdapterKit
    from ..methods import method_name_of
    from ..train.loop import TrainArgs, train_adapter
    from ..train.models import load_classifier

    task = load_task(args)
    train, dev, outputs, metrics = _splits(task, args.eval_limit)
    metrics = tuple(args.metrics) or metrics
    regression = bool(getattr(task, "regression", False))
    model, tok = load_classifier(args.model, outputs, seed=args.seed)
    kit = AdapterKit(model)
    config = method_config(args)
    name = args.name or f"{task.name}_{method_name_of(config)}"
    kit.add(name, config)
    max_length = args.max_length or 64
    targs = TrainArgs(steps=args.steps, batch_size=args.batch_size, max_length=max_length,
                      lr=args.lr, seed=args.seed)
    _prepare(kit, name, tok, train, targs)
    result = train_adapter(kit, name, tok, train, targs)
    counts = _counts(kit, name)
    t0 = time.perf_counter()
    scores = _evaluate(model, tok, dev, max_length, metrics, regression)
    eval_s = time.perf_counter() - t0
    kit.record(name).extra["training"] = {
        "model": args.model, "task": args.task if not args.data else None, "data": args.data,
        "text_columns": args.text_columns, "label_column": args.label_column,
        "regression": regression, "labels": list(getattr(task, "labels", ())),
        "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
        "max_length": max_length, "seed": args.seed, "dev_examples": len(dev),
        "seconds": result.seconds, "final_loss": result.losses[-1], **counts,
        **{f"dev_{k}": v for k, v in scores.items()},
    }
    kit.save(name, args.out)
    print(kit.summary())
    print(f"task {task.name}: {len(train)} train / {len(dev)} dev examples")
    print(f"trained {args.steps} steps in {result.seconds:.1f}s "
          f"({result.seconds_per_step:.3f} s/step), final loss {result.losses[-1]:.4f}")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    print(f"dev {shown} (eval {eval_s:.1f}s); saved to {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import AdapterKit
    from ..core.checkpoint import CONFIG_FILE, read_json
    from ..train.models import load_classifier

    meta = read_json(Path(args.dir) / CONFIG_FILE)
    training = meta.get("training", {})
    if training.get("format"):
        from .sft import cmd_sft_eval

        return cmd_sft_eval(args, training)
    model_name = args.model or training.get("model")
    args.task = args.task or training.get("task")
    args.data = getattr(args, "data", None) or training.get("data")
    if not model_name or not (args.task or args.data):
        raise AdapterError(f"{args.dir} records no model/task; pass --model and --task")
    args.text_columns, args.label_column = training.get("text_columns"), training.get("label_column")
    args.eval_data, args.regression, args.metrics = None, training.get("regression", False), []
    args.eval_limit = args.limit
    task = load_task(args)
    _, dev, outputs, metrics = _splits(task, args.limit)
    # the new head's seed differs from training's: the saved head must replace it
    model, tok = load_classifier(model_name, outputs, seed=12345)
    kit = AdapterKit(model)
    name = kit.load(args.dir)
    kit.activate(name)
    scores = _evaluate(model, tok, dev, training.get("max_length", 64), metrics,
                       bool(training.get("regression")))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    print(f"{name}: {task.name} dev {shown} on {len(dev)} examples")
    return 0


def add_commands(sub: Any) -> None:
    """The ``train`` and ``eval`` subcommands."""
    from .train_args import add_eval_arguments, add_train_arguments

    t = sub.add_parser("train", help="train an adapter: classification, regression or SFT")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a saved adapter on its task's dev split")
    add_eval_arguments(e)
    e.set_defaults(func=cmd_eval)
