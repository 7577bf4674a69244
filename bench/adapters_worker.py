"""The AdapterHub ``adapters`` side of the benchmark suite, run in that library's own virtual
environment (it pins an older transformers): ``make adapters-venv`` creates it.

A worker process: it reads one JSON request per line on stdin and answers one JSON line on
stdout, so that the suite (bench/suite.py, through bench/adapters_side.py) can interleave its
rounds with adapterkit's and PEFT's. It imports neither adapterkit nor peft.

Requests: ``{"op": "setup", "model": DIR, "batch": FILE, "threads": N}`` loads MiniLM from DIR
and the tokenised batch from FILE (safetensors); ``{"op": "run", "case": NAME}`` runs one case
once; ``{"op": "counts"}``, ``{"op": "memory", "variant": NAME}``, ``{"op": "ping"}``.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

CASES: dict[str, Any] = {}
STATE: dict[str, Any] = {}


def _lora_config() -> Any:
    from adapters import LoRAConfig

    return LoRAConfig(r=8, alpha=16, attn_matrices=["q", "v"])


def _bottleneck_config() -> Any:
    from adapters import SeqBnConfig

    return SeqBnConfig(reduction_factor=16)  # Pfeiffer: after the FFN, reads LN(h + x)


def _with_adapter(base: torch.nn.Module, config: Any, train: bool) -> torch.nn.Module:
    import adapters

    model = copy.deepcopy(base)
    adapters.init(model)
    model.add_adapter("a", config=config)
    if train:
        model.train_adapter("a")  # freezes the whole model but the adapter
        for p in model.classifier.parameters():
            p.requires_grad_(True)
    else:
        model.set_active_adapters("a")
    return model


def _step(model: torch.nn.Module) -> Any:
    from common import make_step

    params = [p for p in model.parameters() if p.requires_grad]
    return make_step(model, params, STATE["batch"], STATE["labels"])


def _forward(model: torch.nn.Module) -> Any:
    model.eval()
    batch = STATE["batch"]

    def forward() -> None:
        with torch.no_grad():
            model(**batch)
    return forward


def _loading(base: torch.nn.Module) -> dict[str, Any]:
    """Load the 1st adapter into a fresh model, and the 32nd into one holding 31."""
    import adapters

    tmp = Path(tempfile.mkdtemp())
    holder = _with_adapter(base, _lora_config(), train=False)
    holder.save_adapter(str(tmp / "a"), "a")
    holder.delete_adapter("a")
    for i in range(31):
        holder.load_adapter(str(tmp / "a"), load_as=f"a{i}")
    counter = [0]

    def load_32nd() -> None:
        name = f"x{counter[0]}"
        counter[0] += 1
        holder.load_adapter(str(tmp / "a"), load_as=name)
        holder.delete_adapter(name)

    def load_1st() -> None:
        model = copy.deepcopy(base)
        adapters.init(model)
        model.load_adapter(str(tmp / "a"), load_as="a")

    return {"adapters 32nd": load_32nd, "adapters 1st": load_1st,
            "adapters model copy": lambda: copy.deepcopy(base)}


def setup(req: dict[str, Any]) -> dict[str, Any]:
    import adapters
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(int(req["threads"]))
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(req["model"], num_labels=2)
    base.eval()
    tensors = load_file(req["batch"])
    STATE["labels"] = tensors.pop("labels")
    STATE["batch"] = tensors
    STATE["base"] = base
    lora = _with_adapter(base, _lora_config(), train=True)
    bottleneck = _with_adapter(base, _bottleneck_config(), train=True)
    STATE["trainable"] = {"adapters LoRA": lora, "adapters Bottleneck": bottleneck}
    CASES.update({"adapters LoRA": _step(lora), "adapters Bottleneck": _step(bottleneck)})
    unmerged = _with_adapter(base, _lora_config(), train=False)
    merged = _with_adapter(base, _lora_config(), train=False)
    merged.merge_adapter("a")
    CASES.update({"adapters base": _forward(base), "adapters LoRA unmerged": _forward(unmerged),
                  "adapters LoRA merged": _forward(merged)})
    CASES.update(_loading(base))
    return {"adapters": adapters.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}


def counts() -> dict[str, int]:
    return {k: sum(p.numel() for p in m.parameters() if p.requires_grad)
            for k, m in STATE["trainable"].items()}


def memory(variant: str) -> float:
    """Peak growth of resident memory (MiB) over 5 training steps of ``variant``, measured as
    bench/suite.py measures its own (call it in a worker that has run no other case)."""
    import gc

    from common import peak_rss_growth

    model = STATE["trainable"][variant]
    STATE["trainable"] = {variant: model}
    CASES.clear()
    gc.collect()
    return peak_rss_growth(_step(model))


def handle(req: dict[str, Any]) -> Any:
    op = req.get("op")
    if op == "setup":
        return setup(req)
    if op == "run":
        CASES[req["case"]]()
        return None
    if op == "counts":
        return counts()
    if op == "memory":
        return memory(req["variant"])
    if op == "ping":
        return None
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    for line in sys.stdin:
        try:
            reply = {"ok": True, "value": handle(json.loads(line))}
        except Exception as exc:  # reported to the suite, which prints it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
