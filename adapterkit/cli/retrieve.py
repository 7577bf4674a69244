"""``adapterkit retrieve "query" --model M [--k 3]``: search the hub for the adapters that fit a
model, compose the best ``k`` with weights from their scores, and report what was chosen and why
(optionally as JSON, and as a saved setup that names its adapters by ``hub://`` source)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any


def load_model(name: str) -> Any:
    """``smollm2``, ``minilm`` or a transformers directory, as the class its config names first
    in ``architectures`` (that class's module paths are the ones its adapters were trained on),
    else as ``AutoModel``."""
    import transformers

    from ..train.models import model_dir

    path = model_dir(name)
    config = json.loads((Path(path) / "config.json").read_text())
    names = [str(a) for a in config.get("architectures") or []]
    cls = getattr(transformers, names[0], None) if names else None
    return (cls or transformers.AutoModel).from_pretrained(path)


def cmd_retrieve(args: argparse.Namespace) -> int:
    import adapterkit as ak
    from adapterkit.io.hub.retrieve import retrieve

    filters = {k: v for k, v in (("method", args.method), ("task", args.task)) if v}
    kit = ak.AdapterKit(load_model(args.model))
    got = retrieve(kit, args.query, k=args.k, mode=args.mode, weighting=args.weighting,
                   temperature=args.temperature, endpoint=args.endpoint, token=args.token,
                   **filters)
    if args.save_setup:
        kit.save_setup(args.save_setup, names=got.names,
                       sources={c.name: f"hub://{c.repo_id}@{c.commit}" for c in got.chosen})
    if args.json:
        print(json.dumps({"query": got.query, "mode": got.mode, "weighting": got.weighting,
                          "composition": repr(got.composition),
                          "chosen": [asdict(c) for c in got.chosen],
                          "skipped": [{"repo_id": r, "why": w} for r, w in got.skipped]}, indent=2))
    else:
        print(got.report())
    return 0


def add_commands(sub: Any) -> None:
    r = sub.add_parser("retrieve", help="find the hub adapters that fit a model and compose the best k")
    r.add_argument("query", help="what the adapters should do, in words")
    r.add_argument("--model", required=True, help="'smollm2', 'minilm' or a transformers directory")
    r.add_argument("--k", type=int, default=3, help="how many adapters to compose (default 3)")
    r.add_argument("--mode", choices=("average", "stack"), default="average")
    r.add_argument("--weighting", choices=("normalize", "softmax"), default="normalize",
                   help="weights from the scores: s_i / sum s (default), or a softmax")
    r.add_argument("--temperature", type=float, default=1.0, help="the softmax temperature")
    r.add_argument("--method", help="only adapters of this method (e.g. lora)")
    r.add_argument("--task", help="only adapters for this task")
    r.add_argument("--endpoint", help="the hub's URL (default: $ADAPTERKIT_HUB, else the login's)")
    r.add_argument("--token", help="a token (default: $ADAPTERKIT_HUB_TOKEN, else the login's)")
    r.add_argument("--save-setup", help="write the composition as a setup naming hub:// sources")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=cmd_retrieve)
