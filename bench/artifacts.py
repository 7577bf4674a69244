"""The upload-time cost of a LoRA commit's derived artifacts (Arrow prototypes and the weight
embedding, ``adapterkit.hub.derived``) on SmolLM2-135M's shapes at r=8, beside a dense SVD of
every ``B A`` (the same vectors, computed the expensive way), interleaved run by run.

    python bench/artifacts.py [--repeats 3] [--all-linear]

Writes bench/results/artifacts.{json,md}. ``bench/search.py`` reports the same cost through
:func:`adapterkit.hub.derived.upload_cost`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from adapterkit.hub.derived import SMOLLM2_135M, upload_cost

RESULTS = Path(__file__).resolve().parent / "results"


def dense_svd_s(r: int, targets: tuple[str, ...], layers: int = 30, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(layers):
        for t in targets:
            n_in, n_out = SMOLLM2_135M[t]
            a, b = torch.randn(r, n_in, generator=g), torch.randn(n_out, r, generator=g)
            torch.linalg.svd((b.double() @ a.double()), full_matrices=False)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--all-linear", action="store_true", help="also a LoRA on every linear layer")
    args = p.parse_args()
    load = [os.getloadavg()[0]]
    rows = []
    cases = [("q, v", ("self_attn.q_proj", "self_attn.v_proj"))]
    cases += [("all linear", tuple(SMOLLM2_135M))] if args.all_linear else []
    for name, targets in cases:
        svd, cost_runs = [], []
        for _ in range(args.repeats):  # the two sides interleave, run after run
            cost_runs.append(upload_cost(r=8, targets=targets, repeats=1))
            svd.append(dense_svd_s(8, targets))
        cost = {**cost_runs[0], "repeats": args.repeats,
                **{k: statistics.median(c[k] for c in cost_runs)
                   for k in ("derive_files_s", "derive_s", "embedding_s")}}
        rows.append({**cost, "targets": name, "dense_svd_s": statistics.median(svd),
                     "ratio_to_dense_svd": cost["derive_s"] / statistics.median(svd)})
    load.append(os.getloadavg()[0])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "artifacts.json").write_text(json.dumps({"rows": rows, "load_1min": load}, indent=2) + "\n")
    lines = ["| SmolLM2-135M LoRA r=8 on | sites | weights | prototypes file | artifacts from the file | "
             "of which the embedding | dense SVD of every B A | artifacts / dense SVD |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['targets']} | {row['sites']} | {row['weights_bytes'] / 1e6:.1f} MB | "
                     f"{row['prototypes_bytes'] / 1e3:.0f} kB | {row['derive_files_s'] * 1e3:.0f} ms | "
                     f"{row['embedding_s'] * 1e3:.0f} ms | {row['dense_svd_s'] * 1e3:.0f} ms | "
                     f"{row['ratio_to_dense_svd']:.2f} |")
    lines.append(f"\nMedians of {args.repeats} runs; 1-minute load average {load[0]:.1f} at the start, "
                 f"{load[1]:.1f} at the end. Made by `python bench/artifacts.py`.")
    (RESULTS / "artifacts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
