"""``adapterkit train --format ...``: causal-LM SFT of an adapter (``--model smollm2`` or a local
causal-LM directory), and ``adapterkit eval`` of such an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import AdapterError

SFT_MAX_LENGTH = 512


def _data(args: argparse.Namespace, tok: Any, max_length: int) -> tuple[list[Any], list[Any]]:
    from ..train.sft import read_sft

    train = read_sft(args.data, tok, args.format, max_length, args.truncation)
    if args.eval_data:
        dev = read_sft(args.eval_data, tok, args.format, max_length, args.truncation,
                       args.eval_limit)
    else:
        if len(train) < 2:
            raise AdapterError(f"{args.data}: {len(train)} record(s); hold out part of it with "
                               "more records, or pass --eval-data")
        cut = max(1, len(train) // 10)
        train, dev = train[:-cut], train[-cut:][:args.eval_limit]
    return train, dev


def _print_report(name: str, report: Any, out: str) -> None:
    s = report.summary()
    r = report.result
    print(f"trained {r.steps} steps in {r.seconds:.1f}s ({r.seconds_per_step:.3f} s/step), "
          f"final loss {r.losses[-1]:.4f}")
    print(f"held-out loss {s['heldout_loss_before']:.4f} -> {s['heldout_loss']:.4f}, "
          f"perplexity {s['perplexity_before']:.2f} -> {s['perplexity']:.2f} "
          f"({int(s['heldout_tokens'])} tokens)")
    if s["exact_match"] is not None:
        print(f"exact match {s['exact_match']:.4f} on {s['graded']} held-out answers")
    for sample in report.accuracy["samples"]:
        print(f"  gold {sample['gold']!r}  generated {sample['generated']!r}")
    print(f"{name}: saved to {out}")


def cmd_sft(args: argparse.Namespace) -> int:
    import torch

    from .. import AdapterKit
    from ..methods import method_name_of
    from ..train.loop import TrainArgs
    from ..train.models import load_causal_lm
    from ..train.sft_run import train_sft
    from .train import _counts, method_config

    if args.format is None or not args.data:
        raise AdapterError("causal-LM SFT needs --data FILE and --format "
                           "chat|prompt-completion|text")
    model, tok = load_causal_lm(args.model, args.dtype)
    max_length = args.max_length or min(SFT_MAX_LENGTH, tok.model_max_length or SFT_MAX_LENGTH)
    train, dev = _data(args, tok, max_length)
    kit = AdapterKit(model)
    config = method_config(args)
    name = args.name or f"sft_{method_name_of(config)}"
    kit.add(name, config)
    targs = TrainArgs(steps=args.steps, batch_size=args.batch_size, max_length=max_length,
                      lr=args.lr, seed=args.seed, eval_batch_size=8)
    autocast = torch.bfloat16 if args.autocast else None
    report = train_sft(kit, name, tok, train, dev, targs, args.generate_limit, autocast)
    kit.record(name).extra["training"] = {
        "model": args.model, "format": args.format, "data": args.data,
        "eval_data": args.eval_data, "steps": args.steps, "lr": args.lr,
        "batch_size": args.batch_size, "max_length": max_length, "seed": args.seed,
        "truncation": args.truncation, "dtype": args.dtype, "train_examples": len(train),
        "dev_examples": len(dev), **report.summary(), **_counts(kit, name, head=None),
    }
    kit.save(name, args.out)
    print(kit.summary())
    _print_report(name, report, args.out)
    return 0


def cmd_sft_eval(args: argparse.Namespace, training: dict[str, Any]) -> int:
    from .. import AdapterKit
    from ..train.evaluate import answer_accuracy, heldout_loss
    from ..train.models import load_causal_lm
    from ..train.sft import read_sft

    data = args.data or training.get("eval_data") or training.get("data")
    if not data:
        raise AdapterError(f"{args.dir} records no data file; pass --data")
    model, tok = load_causal_lm(args.model or training["model"], training.get("dtype", "float32"))
    dev = read_sft(data, tok, training["format"], training["max_length"],
                   training.get("truncation", "error"), args.limit)
    kit = AdapterKit(model)
    name = kit.load(args.dir)
    kit.activate(name)
    pad = tok.pad_token_id
    loss = heldout_loss(model, dev, pad)
    acc = answer_accuracy(model, tok, dev)
    print(f"{name}: loss {loss['loss']:.4f}, perplexity {loss['perplexity']:.2f} on "
          f"{len(dev)} records of {data}")
    if acc["exact_match"] is not None:
        print(f"exact match {acc['exact_match']:.4f} on {acc['graded']} answers")
    return 0
