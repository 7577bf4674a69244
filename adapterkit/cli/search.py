"""``adapterkit search "query"``: search a hub from the shell, optionally for adapters that fit a
model (``--model``: 'minilm', 'smollm2' or a transformers directory; ``--fingerprint``: a saved
``model_fingerprint`` JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import AdapterError

FACETS = ("method", "task", "language", "license", "model_type", "base_model")


def _model(name: str, num_labels: int) -> Any:
    from ..train.models import load_causal_lm, load_classifier

    if name == "smollm2":
        return load_causal_lm(name)[0]
    return load_classifier(name, num_labels)[0]


def cmd_search(args: argparse.Namespace) -> int:
    from ..io.hub.search import search

    compatible: Any = None
    if args.model and args.fingerprint:
        raise AdapterError("give --model or --fingerprint, not both")
    if args.model:
        compatible = _model(args.model, args.num_labels)
    elif args.fingerprint:
        with open(args.fingerprint) as f:
            compatible = json.load(f)
    facets = {k: getattr(args, k) for k in FACETS}
    records = search(args.query, endpoint=args.endpoint, token=args.token, compatible_with=compatible,
                     limit=args.limit, mode=args.mode, sort=args.sort, author=args.author,
                     filter=args.filter or [], **facets)
    if args.json:
        print(json.dumps([r.__dict__ for r in records], indent=2, default=str))
        return 0
    for r in records:
        m = r.metadata
        what = " ".join(str(x) for x in (m.get("method"), m.get("base_model") or m.get("model_type"),
                                         ",".join(m.get("tasks") or [])) if x)
        print(f"{r.score:9.4f}  {r.repo_id:40s}  {what}")
    if not records:
        print("no adapter found")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("search", help="search a hub for adapters (text, semantic or hybrid)")
    p.add_argument("query", nargs="?", help="what to look for (omit to list)")
    p.add_argument("--endpoint", help="the hub's URL (default: $ADAPTERKIT_HUB, else the login's)")
    p.add_argument("--token", help="a token (default: $ADAPTERKIT_HUB_TOKEN, else the login's)")
    p.add_argument("--mode", choices=["text", "semantic", "hybrid"], help="default: hybrid")
    p.add_argument("--sort", default="relevance", choices=["relevance", "downloads", "recency", "createdAt",
                                                           "name"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--author", help="owner (user or organisation)")
    p.add_argument("--filter", action="append", help="a tag every hit must have (repeatable)")
    for facet in FACETS:
        p.add_argument(f"--{facet.replace('_', '-')}", dest=facet)
    p.add_argument("--model", help="only adapters that fit this model: 'minilm', 'smollm2' or a directory")
    p.add_argument("--num-labels", type=int, default=2, help="the classifier head of --model")
    p.add_argument("--fingerprint", help="a model_fingerprint JSON file instead of --model")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=cmd_search)
