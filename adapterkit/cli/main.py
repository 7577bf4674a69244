"""The ``adapterkit`` command line: info here; train and eval in :mod:`.train`, the operations
in :mod:`.ops`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import AdapterError


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
    from .train import add_commands as add_train_commands

    add_train_commands(sub)  # train, eval
    i = sub.add_parser("info", help="describe a saved adapter")
    i.add_argument("dir")
    i.set_defaults(func=cmd_info)
    from .ops import add_commands

    add_commands(sub)  # combine, extract, quantize, subspace
    from .serve import add_commands as add_serve

    add_serve(sub)  # serve
    from .hub import add_commands as add_hub_commands

    add_hub_commands(sub)  # hub serve|token|member|audit|purge|verify, push, pull, login
    from .search import add_commands as add_search

    add_search(sub)  # search
    from .retrieve import add_commands as add_retrieve

    add_retrieve(sub)  # retrieve
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.process_argv = list(sys.argv[1:]) if argv is None else None  # run as the command
    try:
        return int(args.func(args))
    except AdapterError as exc:
        print(f"adapterkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
