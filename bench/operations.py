"""Quality of the operations on trained adapters, on MiniLM (all-MiniLM-L6-v2) with SST-2 / RTE.

(a) a LoRA and a bottleneck adapter stored at 32/8/4/2/1 bits (post-training quantisation, and
1-bit quantisation-aware training with the fp32 adapter's budget): dev accuracy and file sizes;
(b) a short full fine-tune of MiniLM on SST-2 extracted as LoRA at several energies;
(c) linear (MerA) and TIES merges of an SST-2 and an RTE LoRA: each task before and after;
(d) an EigenLoRA adapter on RTE on a principal subspace of other (SST-2) LoRA adapters.

Step counts come from OPS_* environment variables (see ops_helpers.Settings); trained adapters
and evaluations are cached under runs/operations/ (OPS_RUNS). Writes docs/operations.md (OPS_DOC)
and bench/results/operations.json (OPS_RESULTS names another file there).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_threads, write
from ops_doc import render
from ops_helpers import Bench, Settings, dir_bytes, file_bytes, head_of, set_head
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import adapterkit as ak
from adapterkit.core.checkpoint import WEIGHTS_FILE, read_safetensors
from adapterkit.ops.quantize.model import enable_qat
from adapterkit.train.loop import _batches, _schedule, classification_batches, encode, fit

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"lora": lambda: ak.LoRA(r=8, alpha=16), "bottleneck": lambda: ak.Bottleneck(reduction=16)}
ENERGIES = (0.5, 0.8, 0.9, 0.99)
FT_TARGETS = ("all-linear", "pooler.dense")


def _adder(name: str, config: Any):
    def setup(kit: ak.AdapterKit) -> str:
        kit.add(name, config)
        return name
    return setup


def _qat(name: str, config: Any, bits: int):
    def setup(kit: ak.AdapterKit) -> str:
        kit.add(name, config)
        enable_qat(kit, name, bits)
        return name
    return setup


def adapter_params(directory: Path) -> int:
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    return sum(t.numel() for k, t in tensors.items() if not k.startswith("head::"))


def part_quantization(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, make in METHODS.items():
        fp32 = b.train(f"sst2_{method}_s{b.s.steps}", "sst2", b.s.steps, b.s.lr,
                       _adder("sst2", make()))
        rows = [{"bits": 32, "ptq": b.evaluate(fp32, "sst2"), "bytes": file_bytes(fp32),
                 "dir_bytes": dir_bytes(fp32)}]
        for bits in (8, 4, 2, 1):
            q = b.runs / f"{fp32.name}_q{bits}"
            if not q.is_dir():
                ak.quantize(fp32, bits, q)
            rows.append({"bits": bits, "ptq": b.evaluate(q, "sst2"), "bytes": file_bytes(q),
                         "dir_bytes": dir_bytes(q)})
        qat_q = _qat_run(b, method, b.s.seed, 1.0)
        rows[-1].update(qat=b.evaluate(qat_q, "sst2"), qat_bytes=file_bytes(qat_q))
        out[method] = {"rows": rows, "params": adapter_params(fp32), "dir": str(fp32),
                       "qat_dir": str(qat_q)}
    dev = b.data("sst2", "dev")
    out["majority"] = max(sum(e.label == c for e in dev) for c in (0, 1)) / len(dev)
    out["seeds"] = _more_seeds(b, out)
    return out


def _qat_run(b: Bench, method: str, seed: int, factor: float) -> Path:
    """The 1-bit checkpoint of ``method`` trained with QAT at ``factor`` times lr with ``seed``."""
    key = f"sst2_{method}_s{b.s.steps}" + ("" if seed == b.s.seed else f"_seed{seed}") + "_qat1"
    key += "" if factor == 1 else f"_lrx{factor:g}"
    qat = b.train(key, "sst2", b.s.steps, b.s.lr * factor, _qat("sst2", METHODS[method](), 1),
                  seed=seed)
    qat_q = b.runs / f"{qat.name}_q1"
    if not qat_q.is_dir():
        ak.quantize(qat, 1, qat_q)
    return qat_q


def _more_seeds(b: Bench, out: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """fp32 and 1-bit QAT accuracy (per QAT learning-rate factor) per seed, the main rows' seed
    first, for each method."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for method, make in METHODS.items():
        runs[method] = []
        for seed in (b.s.seed, *b.s.more_seeds):
            if seed == b.s.seed:
                fp32 = out[method]["rows"][0]["ptq"]
            else:
                d = b.train(f"sst2_{method}_s{b.s.steps}_seed{seed}", "sst2", b.s.steps, b.s.lr,
                            _adder("sst2", make()), seed=seed)
                fp32 = b.evaluate(d, "sst2")
            qat = {f"{f:g}": b.evaluate(_qat_run(b, method, seed, f), "sst2")
                   for f in b.s.qat_lr_factors}
            runs[method].append({"seed": seed, "fp32": fp32, "qat": qat})
    return runs


def _full_finetune(b: Bench, out: Path) -> float:
    """AdamW on every parameter of MiniLM + a new head, the adapters' schedule; returns seconds."""
    model, tok = b.model(seed=b.s.seed)
    torch.manual_seed(b.s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=b.s.ft_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, b.s.ft_steps, 0.06))
    model.train()
    print(f"training {out.name}: {b.s.ft_steps} steps", flush=True)
    start = time.perf_counter()
    data = b.data("sst2", "train")
    for _, batch in zip(range(b.s.ft_steps), _batches(data, b.s.batch, b.s.seed)):
        loss = model(**encode(tok, batch, 64), labels=torch.tensor([e.label for e in batch])).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "bench.json").write_text(json.dumps({"train_seconds": seconds,
                                                "threads": torch.get_num_threads()}))
    return seconds


def _extract(b: Bench, ft_dir: Path, out: Path, **kw: Any) -> dict[str, Any]:
    if not (out / "bench.json").is_file():
        base, _ = b.model(seed=0)
        ft = AutoModelForSequenceClassification.from_pretrained(ft_dir)
        report = ak.extract_lora(base, ft, name="extracted", **kw)
        ak.AdapterKit(base).save("extracted", out)
        (out / "bench.json").write_text(json.dumps(report.summary()))
    return json.loads((out / "bench.json").read_text())


def part_extraction(b: Bench) -> dict[str, Any]:
    ft_dir = b.runs / f"sst2_full_s{b.s.ft_steps}"
    if not (ft_dir / "bench.json").is_file():
        _full_finetune(b, ft_dir)
    ft_model = AutoModelForSequenceClassification.from_pretrained(ft_dir)
    full_accuracy = b.cached(f"{ft_dir}|full|{b.s.eval_limit}", f"{ft_dir.name} on sst2",
                             lambda: b.accuracy(ft_model, AutoTokenizer.from_pretrained(ft_dir), "sst2"))
    rows = []
    for energy in ENERGIES:
        d = b.runs / f"{ft_dir.name}_e{energy}"
        summary = _extract(b, ft_dir, d, energy=energy, targets=FT_TARGETS,
                           include_heads=("classifier",))
        rows.append({"energy": energy, "accuracy": b.evaluate(d, "sst2"), "bytes": file_bytes(d),
                     **{k: summary[k] for k in ("adapter_params", "full_delta_params", "min_energy",
                                                "rank_min", "rank_max", "share_kept",
                                                "share_untargeted", "top_untargeted")}})
    qv8 = _extract(b, ft_dir, b.runs / f"{ft_dir.name}_qv_r8", rank=8, targets=("attn.q", "attn.v"))
    ft_meta = json.loads((ft_dir / "bench.json").read_text())
    return {"full_accuracy": full_accuracy, "rows": rows,
            "full_params": sum(p.numel() for p in ft_model.parameters()),
        "qv_r8_dir": str(b.runs / f"{ft_dir.name}_qv_r8"), "qv_r8": qv8,
        **{k: ft_meta.get(k) for k in ("train_seconds", "threads")}}


def part_merge(b: Bench, sst2_lora: Path) -> dict[str, Any]:
    rte = b.train(f"rte_lora_s{b.s.rte_steps}", "rte", b.s.rte_steps, b.s.lr,
                  _adder("rte", METHODS["lora"]()))
    own = {"sst2": b.evaluate(sst2_lora, "sst2"), "rte": b.evaluate(rte, "rte")}
    model, tok = b.model()
    kit = ak.AdapterKit(model)
    kit.load(sst2_lora, name="sst2")
    kit.load(rte, name="rte")
    heads = {"sst2": head_of(sst2_lora), "rte": head_of(rte)}
    reports = {"linear": kit.combine("linear", {"sst2": 0.5, "rte": 0.5}, how="linear"),
               "ties": kit.combine("ties", {"sst2": 1.0, "rte": 1.0}, how="ties", density=0.2)}
    rows = {"own adapter": own}
    for merged in reports:
        rows[merged] = {}
        for task in ("sst2", "rte"):
            set_head(model, heads[task])
            kit.activate(merged)
            key = f"{sst2_lora}+{rte}|{merged}|{task}|{b.s.eval_limit}|{b.s.rte_eval_limit}"
            rows[merged][task] = b.cached(key, f"{merged} on {task}",
                                          lambda t=task: b.accuracy(model, tok, t))
    return {"rows": rows, "rte_dir": str(rte),
            "reports": {k: {"exact": r.exact, "ranks": sorted(set(r.ranks.values())), "note": r.note}
                        for k, r in reports.items()}}


def _head_only(b: Bench) -> float:
    """RTE dev accuracy of MiniLM with only its classifier head trained (no adapter)."""
    model, tok = b.model(seed=b.s.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.classifier.parameters())
    for p in params:
        p.requires_grad_(True)
    args = b.targs("rte", b.s.rte_steps, b.s.lr)
    print(f"training the RTE head alone: {args.steps} steps", flush=True)
    fit(model, params, classification_batches(tok, b.data("rte", "train"), args), args)
    return b.accuracy(model, tok, "rte")


def part_eigenlora(b: Bench, sources: list[Path], rte_lora: Path) -> dict[str, Any]:
    basis, summary = b.runs / "basis_k16.safetensors", b.runs / "basis_k16.json"
    if not summary.is_file():  # built once: the adapters trained on it record its digest
        summary.write_text(json.dumps(ak.principal_subspace(sources, 16, basis).summary()))
    config = ak.EigenLoRA(basis=str(basis), k=16, r=8, alpha=16)
    rows = []
    for lr in b.s.eigen_lrs:
        eig = b.train(f"rte_eigenlora_k16_s{b.s.rte_steps}_lr{lr:g}", "rte", b.s.rte_steps, lr,
                      _adder("rte_eigen", config))
        rows.append({"lr": lr, "accuracy": b.evaluate(eig, "rte"), "params": adapter_params(eig),
                     "bytes": file_bytes(eig)})
    head = b.cached(f"rte_head_only_s{b.s.rte_steps}_lr{b.s.lr}|{b.s.rte_eval_limit}",
                    "head only on rte", lambda: _head_only(b))
    dev = b.data("rte", "dev")
    majority = max(sum(e.label == c for e in dev) for c in (0, 1)) / len(dev)
    return {"eigenlora": rows, "head_only": head,
            "lora": {"accuracy": b.evaluate(rte_lora, "rte"), "params": adapter_params(rte_lora),
                     "bytes": file_bytes(rte_lora)},
            "majority": majority, "dev_examples": len(dev), "basis": json.loads(summary.read_text()),
            "basis_bytes": basis.stat().st_size,
            "sources": [str(s) for s in sources]}


def main() -> int:
    threads = pin_threads()
    s = Settings()
    b = Bench(s)
    start = time.perf_counter()
    print(f"settings {s.as_dict()}, {threads} threads", flush=True)
    host = f"a {os.cpu_count()}-core CPU ({threads} thread{'s' * (threads != 1)})"
    results: dict[str, Any] = {"settings": s.as_dict(), "host": host}
    results["quantization"] = part_quantization(b)
    results["extraction"] = part_extraction(b)
    sst2_lora = Path(results["quantization"]["lora"]["dir"])
    results["merge"] = part_merge(b, sst2_lora)
    sources = [sst2_lora, Path(results["quantization"]["lora"]["qat_dir"]),
               Path(results["extraction"]["qv_r8_dir"])]
    results["eigenlora"] = part_eigenlora(b, sources, Path(results["merge"]["rte_dir"]))
    results["train_seconds"] = b.train_seconds
    results["wall_seconds"] = time.perf_counter() - start
    results["train_threads"] = b.train_threads
    doc = Path(os.environ.get("OPS_DOC", ROOT / "docs" / "operations.md"))
    doc.write_text(render(results))
    json_path = write(os.environ.get("OPS_RESULTS", "operations"), results)
    print(f"done in {results['wall_seconds']:.0f}s: {doc}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
