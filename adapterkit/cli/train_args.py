"""The options of ``adapterkit train`` and ``adapterkit eval``."""

from __future__ import annotations

import argparse

from ..train.sft import FORMATS, TRUNCATION


def _method_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--method", choices=("lora", "bottleneck"), default="lora")
    t.add_argument("--config", help="any registered method's config as JSON, e.g. "
                   '\'{"method": "ia3"}\', or @FILE; replaces --method and its options')
    t.add_argument("--r", type=int, default=8)
    t.add_argument("--alpha", type=float, default=16)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--targets", nargs="+", default=["attn.q", "attn.v"],
                   help="layout roles or module patterns ('all-linear' for every linear layer)")
    t.add_argument("--reduction", type=float, default=16)
    t.add_argument("--placement", choices=("ffn", "attn", "both"), default="ffn")
    t.add_argument("--mode", choices=("series", "parallel"), default="series")


def _data_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--task", default="sst2",
                   help="'sst2', 'rte', 'mrpc', 'stsb' (GLUE) or a TSV task directory")
    t.add_argument("--data", help="a local JSONL, JSON, CSV, TSV or parquet training file")
    t.add_argument("--eval-data", help="the held-out file (default: the last 10%% of --data)")
    t.add_argument("--text-columns", nargs="+", help="classification/regression input columns")
    t.add_argument("--label-column", help="classification/regression label column")
    t.add_argument("--regression", action="store_true",
                   help="the label column holds numbers: train a regression head")
    t.add_argument("--metrics", nargs="+", default=[],
                   help="accuracy, f1, macro_f1, mcc, pearson, spearman (default: by task)")
    t.add_argument("--format", choices=FORMATS,
                   help="causal-LM SFT records: chat (messages), prompt-completion or text")
    t.add_argument("--truncation", choices=TRUNCATION, default="error",
                   help="an SFT record longer than --max-length: error, or drop tokens from "
                   "the left (the prompt's start) or the right")
    t.add_argument("--eval-limit", type=int, help="evaluate on the first N dev examples")
    t.add_argument("--generate-limit", type=int, default=64,
                   help="SFT: grade generated answers on the first N held-out records")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--model", default="minilm",
                   help="'minilm', 'smollm2' (causal LM, SFT) or a local transformers directory")
    _data_arguments(t)
    _method_arguments(t)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--out", required=True)
    t.add_argument("--name")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-length", type=int,
                   help="tokens per example (default 64; 512 for SFT)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="SFT: the base model's dtype (adapters stay float32)")
    t.add_argument("--autocast", choices=("bfloat16",),
                   help="SFT: run under torch.autocast('cpu', bfloat16)")


def add_eval_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("dir")
    e.add_argument("--model")
    e.add_argument("--task")
    e.add_argument("--data", help="SFT: the held-out file (default: the one recorded)")
    e.add_argument("--limit", type=int)
