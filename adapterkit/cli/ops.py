"""``adapterkit combine | extract | quantize | subspace``: operations on trained adapters from the
shell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import AdapterError

_HEADS = ("classifier", "score", "qa_outputs")


def _load_pair(base: str, finetuned: str) -> tuple[Any, Any]:
    """(base, fine-tuned) transformers models of the fine-tune's class (with its label count)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from ..train.models import _quiet, model_dir

    _quiet()
    ft_dir = model_dir(finetuned)
    cfg = AutoConfig.from_pretrained(ft_dir)
    seq_cls = any(a.endswith("ForSequenceClassification") for a in cfg.architectures or ())
    cls = AutoModelForSequenceClassification if seq_cls else AutoModel
    kw = {"num_labels": cfg.num_labels} if seq_cls else {}
    torch.manual_seed(0)
    return cls.from_pretrained(model_dir(base), **kw), cls.from_pretrained(ft_dir)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..kit import AdapterKit, extract_lora

    base, ft = _load_pair(args.base, args.finetuned)
    if args.heads == ["auto"]:
        heads = tuple(h for h in _HEADS if hasattr(ft, h))
    else:
        heads = () if args.heads == ["none"] else tuple(args.heads)
    energy = None if args.rank is not None or args.energy >= 1.0 else args.energy
    report = extract_lora(base, ft, rank=args.rank, energy=energy, targets=tuple(args.targets),
                          name=args.name, include_heads=heads, progress=True)
    kit = AdapterKit(base)
    if args.task:
        kit.record(args.name).extra["training"] = {"model": args.base, "task": args.task}
    kit.save(args.name, args.out)
    print(report)
    worst = sorted(report.sites.items(), key=lambda kv: kv[1]["energy"])[:3]
    print("lowest energy: " + ", ".join(f"{s} r={int(v['rank'])} {v['energy']:.3f}" for s, v in worst))
    if report.top_untargeted:
        print("largest untargeted changes (share of the total): "
              + ", ".join(f"{n} {100 * v:.2f}%" for n, v in report.top_untargeted[:3]))
    print(f"saved to {args.out}")
    return 0


def _weighted(items: list[str]) -> list[tuple[str, float]]:
    """``DIR`` or ``DIR=WEIGHT`` arguments as (directory, weight); the weight defaults to 1."""
    out = []
    for item in items:
        d, sep, w = item.rpartition("=")
        path, weight = (d, w) if sep else (item, "1")
        try:
            out.append((path, float(weight)))
        except ValueError:
            raise AdapterError(f"{item!r}: expected DIR or DIR=WEIGHT with a numeric weight") from None
    return out


def cmd_combine(args: argparse.Namespace) -> int:
    from ..core.checkpoint import CONFIG_FILE, read_json
    from ..kit import AdapterKit
    from ..train.models import load_classifier

    sources = _weighted(args.adapters)
    metas = [read_json(Path(d) / CONFIG_FILE) for d, _ in sources]
    recorded = [m.get("training", {}).get("model") for m in metas]
    model_name = args.model or next((m for m in recorded if m), None)
    if model_name is None:
        raise AdapterError("the adapters record no base model; pass --model")
    paths = [Path(d).resolve() for d, _ in sources]
    head = None
    if args.head_from:
        if Path(args.head_from).resolve() not in paths:
            raise AdapterError(f"--head-from {args.head_from!r} is not one of the adapters")
        head = paths.index(Path(args.head_from).resolve())
    model, _ = load_classifier(model_name, args.num_labels)
    kit = AdapterKit(model)
    order = [i for i in range(len(sources)) if i != head] + ([head] if head is not None else [])
    names = {}
    for i in order:  # the --head-from adapter last, so its head is the model's
        names[i] = kit.load(sources[i][0], name=f"source{i}")
    options = {k: getattr(args, k) for k in ("rank", "energy", "density", "seed")
               if getattr(args, k) is not None}
    report = kit.combine(args.name, {names[i]: w for i, (_, w) in enumerate(sources)}, how=args.how,
                         **options)
    record = kit.record(args.name)
    record.extra["combined"]["sources"] = {d: w for d, w in sources}
    if head is not None:
        record.heads = kit.record(names[head]).heads
        task = metas[head].get("training", {}).get("task")
        record.extra["training"] = {"model": model_name, **({"task": task} if task else {})}
    kit.save(args.name, args.out)
    print(report)
    print(f"saved to {args.out}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..ops.quantize.model import quantize

    vector_bits = None if args.vector_bits == "none" else int(args.vector_bits)
    try:
        report = quantize(args.dir, args.bits, args.out, vector_bits=vector_bits, heads=args.heads)
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    print(report)
    return 0


def cmd_subspace(args: argparse.Namespace) -> int:
    from ..ops.subspace import principal_subspace

    report = principal_subspace(args.dirs, args.k, args.out, center=not args.no_center, seed=args.seed)
    print(json.dumps(report.summary(), indent=2))
    return 0


def add_commands(sub: Any) -> None:
    """Add the subcommands to the ``adapterkit`` parser's subparsers."""
    c = sub.add_parser("combine", help="combine saved adapters (cat, svd, linear, ties, dare...)")
    c.add_argument("adapters", nargs="+", metavar="DIR[=WEIGHT]", help="adapter directories (weight 1)")
    c.add_argument("--how", default="cat", choices=("cat", "svd", "linear", "task_arithmetic",
                                                   "ties", "dare_linear", "dare_ties"))
    c.add_argument("--rank", type=int, help="svd: target rank per site")
    c.add_argument("--energy", type=float, help="svd: share of sum(sigma^2) to keep per site")
    c.add_argument("--density", type=float, help="ties/dare: share of entries kept")
    c.add_argument("--seed", type=int, help="dare: seed of the random drop")
    c.add_argument("--model", help="base model ('minilm' or a directory; default: the recorded one)")
    c.add_argument("--num-labels", type=int, default=2, help="labels of the model's task head")
    c.add_argument("--head-from", metavar="DIR", help="save this adapter's trained head with the result")
    c.add_argument("--name", default="combined")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_combine)
    x = sub.add_parser("extract", help="extract a LoRA adapter from a full fine-tune (truncated SVD)")
    x.add_argument("--base", required=True, help="'minilm' or the base transformers directory")
    x.add_argument("--finetuned", required=True, help="the fine-tuned transformers directory")
    x.add_argument("--energy", type=float, default=0.9,
                   help="per-layer share of sum(sigma^2) to keep (>= 1: full rank)")
    x.add_argument("--rank", type=int, help="fixed rank per layer (overrides --energy)")
    x.add_argument("--targets", nargs="+", default=["all-linear"])
    x.add_argument("--heads", nargs="+", default=["auto"],
                   help="modules saved whole with the adapter: 'auto' (the task head), 'none', or names")
    x.add_argument("--task", help="task recorded for 'adapterkit eval' ('sst2', 'rte' or a TSV dir)")
    x.add_argument("--name", default="extracted")
    x.add_argument("--out", required=True)
    x.set_defaults(func=cmd_extract)
    q = sub.add_parser("quantize", help="store an adapter with 1, 2, 4 or 8-bit weights")
    q.add_argument("dir")
    q.add_argument("--bits", type=int, required=True, choices=(1, 2, 4, 8))
    q.add_argument("--vector-bits", default="8", choices=("1", "2", "4", "8", "none"),
                   help="bits of biases and other vectors ('none': full precision)")
    q.add_argument("--heads", action="store_true", help="quantise the trained heads too")
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_quantize)
    s = sub.add_parser("subspace", help="principal subspace of LoRA adapters, for EigenLoRA")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--k", type=int, required=True, help="components per site")
    s.add_argument("--out", required=True, help="the basis file to write (.safetensors)")
    s.add_argument("--no-center", action="store_true", help="span of the raw vectors (no PCA centring)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_subspace)
