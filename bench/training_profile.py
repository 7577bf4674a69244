"""Operator counts of one LoRA training step, adapterkit beside PEFT, from ``torch.profiler``:
SmolLM2-135M-Instruct, LoRA r=16 on every linear layer, one AdamW step on a short batch. The
counts do not depend on the machine's load (the self CPU times beside them do), so they show
whether one library runs work the other does not: extra casts, multiplications, recomputation.

    python bench/training_profile.py    # writes bench/results/training_profile.{json,md}
    PROFILE_CASES=bf16-autocast PROFILE_TOKENS=32   # cases (fp32, fp32-ckpt, bf16-autocast,
                                                    # bf16-autocast-ckpt) and tokens per batch
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import RESULTS, pin_threads, table, write  # noqa: E402
from training import _adapt, _model  # noqa: E402

CASES = os.environ.get("PROFILE_CASES", "fp32-ckpt,bf16-autocast").split(",")
TOKENS = int(os.environ.get("PROFILE_TOKENS", "32"))
SHOWN = ("aten::mm", "aten::mul", "aten::add", "aten::copy_", "aten::_to_copy",
         "aten::empty_strided", "aten::linear")


def profile_step(library: str, case: str) -> tuple[Counter[str], Counter[str]]:
    """(count, self CPU microseconds) per operator of the second training step."""
    from torch.profiler import ProfilerActivity, profile

    model = _model("fp32")
    if case.endswith("ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model, params, _ = _adapt(model, library)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(5, 49000, (1, TOKENS), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=case.startswith("bf16")):
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    counts, times = Counter[str](), Counter[str]()
    for e in prof.key_averages():
        counts[e.key], times[e.key] = e.count, int(e.self_cpu_time_total)
    return counts, times


def main() -> None:
    pin_threads(1)
    warnings.filterwarnings("ignore")
    rows: list[tuple[str, ...]] = []
    out: dict[str, Any] = {}
    for case in CASES:
        (oc, ot), (pc, pt) = (profile_step(lib, case) for lib in ("adapterkit", "peft"))
        out[case] = {"adapterkit": dict(oc), "peft": dict(pc)}
        for op in (*SHOWN, "all operators"):
            o, p = (sum(c.values()) if op == "all operators" else c[op] for c in (oc, pc))
            rows.append((case, op, str(o), str(p), f"{o - p:+d}"))
        rows.append((case, "self CPU s (load-dependent)", f"{sum(ot.values()) / 1e6:.2f}",
                     f"{sum(pt.values()) / 1e6:.2f}", ""))
        print(case, "done", flush=True)
    md = (f"Operator calls in one training step (batch 1 x {TOKENS} tokens), from torch.profiler"
          ".\n\n" + table(rows, ("case", "operator", "adapterkit", "PEFT", "ours - PEFT"))
          + f"\n\n1-minute load average at the end: {os.getloadavg()[0]:.1f}.\n")
    write("training_profile", {"tokens": TOKENS, "cases": out})
    (RESULTS / "training_profile.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
