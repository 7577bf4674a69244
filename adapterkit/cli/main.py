"""The ``adapterkit`` command line: train, eval and info."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AdapterError


def _method_config(args: argparse.Namespace) -> Any:
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


def _counts(kit: Any, name: str) -> dict[str, int]:
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
    head = sum(p.numel() for p in kit.model.get_submodule("classifier").parameters())
    total = sum(p.numel() for p in kit.model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in kit.model.named_parameters() if not p.requires_grad)
    return {"adapter_params": adapter, "head_params": head, "trainable_params": total,
            "base_params": base}


def cmd_train(args: argparse.Namespace) -> int:
    from .. import AdapterKit
    from ..methods import method_name_of
    from ..train.data import get_task
    from ..train.loop import TrainArgs, accuracy, predict, train_adapter
    from ..train.models import load_classifier

    task = get_task(args.task)
    train, dev = task.split("train"), task.split("dev", limit=args.eval_limit)
    model, tok = load_classifier(args.model, len(task.labels), seed=args.seed)
    kit = AdapterKit(model)
    config = _method_config(args)
    name = args.name or f"{task.name}_{method_name_of(config)}"
    kit.add(name, config)
    targs = TrainArgs(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                      lr=args.lr, seed=args.seed)
    _prepare(kit, name, tok, train, targs)
    result = train_adapter(kit, name, tok, train, targs)
    counts = _counts(kit, name)
    t0 = time.perf_counter()
    acc = accuracy(predict(model, tok, dev, args.max_length, show=True), dev)
    eval_s = time.perf_counter() - t0
    kit.record(name).extra["training"] = {
        "model": args.model, "task": args.task, "steps": args.steps, "lr": args.lr,
        "batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed,
        "dev_accuracy": acc, "dev_examples": len(dev), "seconds": result.seconds,
        "final_loss": result.losses[-1], **counts,
    }
    kit.save(name, args.out)
    print(kit.summary())
    print(f"task {task.name}: {len(train)} train / {len(dev)} dev examples")
    print(f"trained {args.steps} steps in {result.seconds:.1f}s "
          f"({result.seconds_per_step:.3f} s/step), final loss {result.losses[-1]:.4f}")
    print(f"dev accuracy {acc:.4f} (eval {eval_s:.1f}s); saved to {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import AdapterKit
    from ..core.checkpoint import CONFIG_FILE, read_json
    from ..train.data import get_task
    from ..train.loop import accuracy, predict
    from ..train.models import load_classifier

    meta = read_json(Path(args.dir) / CONFIG_FILE)
    training = meta.get("training", {})
    model_name, task_name = args.model or training.get("model"), args.task or training.get("task")
    if not model_name or not task_name:
        raise AdapterError(f"{args.dir} records no model/task; pass --model and --task")
    task = get_task(task_name)
    dev = task.split("dev", limit=args.limit)
    # the new head's seed differs from training's: the saved head must replace it
    model, tok = load_classifier(model_name, len(task.labels), seed=12345)
    kit = AdapterKit(model)
    name = kit.load(args.dir)
    kit.activate(name)
    acc = accuracy(predict(model, tok, dev, show=True), dev)
    print(f"{name}: {task.name} dev accuracy {acc:.4f} on {len(dev)} examples")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..core.checkpoint import CONFIG_FILE, WEIGHTS_FILE, detect_format, read_json, read_safetensors

    d = Path(args.dir)
    fmt = detect_format(d)
    meta = read_json(d / CONFIG_FILE)
    print(f"{d}: {fmt} adapter")
    if fmt != "adapterkit":
        print(json.dumps(meta, indent=2))
        return 0
    tensors = read_safetensors(d / WEIGHTS_FILE)
    if "quantization" in meta:  # count the parameters, not the packed codes
        from ..ops.quantize.model import dequantize_checkpoint

        tensors = dequantize_checkpoint(meta, tensors, str(d))
    heads = sum(t.numel() for k, t in tensors.items() if k.startswith("head::"))
    total = sum(t.numel() for t in tensors.values())
    print(f"name     {meta['name']}\nmethod   {meta['config'].get('method')}")
    print(f"config   {json.dumps(meta['config'])}")
    base = meta.get("base", {})
    print(f"base     model_type={base.get('model_type')} layout={base.get('layout')} "
          f"fingerprint={base.get('fingerprint')} sites={len(base.get('sites', []))}")
    print(f"tensors  {len(tensors)} ({total - heads:,} adapter + {heads:,} head parameters), "
          f"{(d / WEIGHTS_FILE).stat().st_size:,} bytes")
    print(f"version  format {meta['format_version']}, adapterkit {meta.get('adapterkit_version')}")
    if "quantization" in meta:
        q = meta["quantization"]
        print(f"quantized {q['bits']} bits ({q['scheme']}), vectors {q['vector_bits'] or 'full'} bits")
    if "training" in meta:
        print(f"training {json.dumps(meta['training'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapterkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an adapter on a classification task")
    t.add_argument("--model", default="minilm", help="'minilm' or a local transformers directory")
    t.add_argument("--task", default="sst2", help="'sst2', 'rte' or a TSV task directory")
    t.add_argument("--method", choices=("lora", "bottleneck"), default="lora")
    t.add_argument("--config", help="any registered method's config as JSON, e.g. "
                   '\'{"method": "ia3"}\', or @FILE; replaces --method and its options')
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--out", required=True)
    t.add_argument("--name")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-length", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-limit", type=int, help="evaluate on the first N dev examples")
    t.add_argument("--r", type=int, default=8)
    t.add_argument("--alpha", type=float, default=16)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--targets", nargs="+", default=["attn.q", "attn.v"])
    t.add_argument("--reduction", type=float, default=16)
    t.add_argument("--placement", choices=("ffn", "attn", "both"), default="ffn")
    t.add_argument("--mode", choices=("series", "parallel"), default="series")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a saved adapter on its task's dev split")
    e.add_argument("dir")
    e.add_argument("--model")
    e.add_argument("--task")
    e.add_argument("--limit", type=int)
    e.set_defaults(func=cmd_eval)
    i = sub.add_parser("info", help="describe a saved adapter")
    i.add_argument("dir")
    i.set_defaults(func=cmd_info)
    from .ops import add_commands

    add_commands(sub)  # combine, extract, quantize, subspace
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdapterError as exc:
        print(f"adapterkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
