"""``adapterkit serve``: the OpenAI-compatible server (see docs/serving.md)."""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..errors import AdapterError

#: OpenMP threads that sleep between parallel regions instead of spinning: a decode step is many
#: short regions, and on shared cores spinning threads take turns with other processes' work
#: (measured 7-27x slower steps under load, see docs/serving.md). Read once, when torch is
#: imported, so the server restarts itself with it; a value the user set is kept.
OMP_VARIABLE, OMP_POLICY = "OMP_WAIT_POLICY", "PASSIVE"
#: ``ADAPTERKIT_SERVE_OMP_PASSIVE=0`` (or ``--keep-omp-wait-policy``) leaves the process as started
OPT_OUT = "ADAPTERKIT_SERVE_OMP_PASSIVE"

_SIZE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[KMG]i?B?|B)?", re.I)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10, "m": 10**6,
          "mb": 10**6, "mi": 2**20, "mib": 2**20, "g": 10**9, "gb": 10**9, "gi": 2**30,
          "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``64MB``, ``1.5GiB``, ..."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise AdapterError(f"--max-resident-bytes {text!r}: give a number of bytes, e.g. "
                           "500000000, 500MB or 1GiB")
    return int(float(m.group("n")) * _UNITS[(m.group("unit") or "").lower()])


def parse_adapter(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise AdapterError(f"--adapter {text!r}: use NAME=SOURCE (a directory, or hub://...)")
    return name, source


def restart_argv(args: argparse.Namespace, env: dict[str, str]) -> list[str] | None:
    """The command that starts this server again under ``OMP_WAIT_POLICY=PASSIVE``, or None:
    when the variable is set already, the user opted out, or ``main`` was called in-process
    (``args.process_argv`` is None) rather than as the command."""
    argv = getattr(args, "process_argv", None)
    if argv is None or OMP_VARIABLE in env or args.keep_omp_wait_policy or os.name != "posix":
        return None
    if env.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return [sys.executable, "-m", "adapterkit.cli", *argv]


def cmd_serve(args: argparse.Namespace) -> int:
    argv = restart_argv(args, dict(os.environ))
    if argv is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, {**os.environ, OMP_VARIABLE: OMP_POLICY})
    from ..serve import Options, SchedulerConfig, serve

    try:
        scheduler = SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_prefill_tokens=args.max_prefill_tokens,
            max_active_adapters=args.max_active_adapters, max_waiting=args.max_waiting,
            queue_timeout=args.queue_timeout, policy=args.scheduler)
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    opts = Options(
        model=args.model, adapters=[parse_adapter(a) for a in args.adapter],
        served_model_name=args.served_model_name, max_model_len=args.max_model_len,
        max_resident_bytes=parse_size(args.max_resident_bytes) if args.max_resident_bytes else None,
        runtime_lora=args.enable_runtime_lora, device=args.device, dtype=args.dtype,
        scheduler=scheduler)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(opts, host=args.host, port=args.port)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve a model and its adapters over an OpenAI-compatible "
                       "HTTP API")
    s.add_argument("--model", required=True, help="'smollm2', 'minilm' or a transformers directory")
    s.add_argument("--adapter", action="append", default=[], metavar="NAME=SOURCE",
                   help="serve the adapter at SOURCE (a directory, adapterkit or PEFT format, or "
                   "hub://org/name@rev) as NAME; repeatable")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", help="the base model's id (default: --model)")
    s.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    s.add_argument("--max-num-seqs", type=int, default=32, help="rows in the running batch")
    s.add_argument("--max-prefill-tokens", type=int, default=512,
                   help="prompt tokens prefilled per step")
    s.add_argument("--max-active-adapters", type=int, default=32,
                   help="distinct adapters in one batch")
    s.add_argument("--max-resident-bytes", help="byte budget of adapters kept in memory "
                   "(e.g. 200MB; default: no limit)")
    s.add_argument("--max-waiting", type=int, default=1024,
                   help="queued requests before the server answers 429")
    s.add_argument("--queue-timeout", type=float, help="seconds a request may wait for a slot")
    s.add_argument("--scheduler", choices=("continuous", "static"), default="continuous",
                   help="'static': a new batch only when the running one has finished (baseline)")
    s.add_argument("--enable-runtime-lora", action="store_true",
                   help="allow /v1/load_lora_adapter and /v1/unload_lora_adapter")
    s.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    s.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--keep-omp-wait-policy", action="store_true",
                   help=f"do not restart with {OMP_VARIABLE}={OMP_POLICY} when the variable is "
                   f"unset (also: {OPT_OUT}=0)")
    s.set_defaults(func=cmd_serve)
