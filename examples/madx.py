"""MAD-X style composition on the packaged MiniLM: a language adapter stacked under task adapters,
and AdapterFusion over an SST-2 and an RTE adapter.

Pfeiffer et al., 2020, "MAD-X" (arXiv:2005.00052); Pfeiffer et al., 2021, "AdapterFusion"
(arXiv:2005.00247). Steps (each result is cached under MADX_OUT, default runs/madx):

1. ``lang``: a language adapter (a Pfeiffer bottleneck plus an invertible adapter on the
   embeddings, one method union) trained with masked language modelling on the SST-2 and RTE
   training sentences; the MLM head (random: the packaged checkpoint has none) trains beside it
   and is not saved.
2. ``sst2`` and ``rte``: task adapters trained in ``Stack("lang", task)`` with ``lang`` frozen,
   and, for comparison, the same task adapters trained without ``lang``.
3. ``Fuse("sst2", "rte")`` over the stacked task adapters, trained for each task (fusion layer
   and head only).

Prints SST-2 and RTE dev accuracy of every setup. ``python examples/madx.py``; MADX_STEPS
(default 200) sets the steps of every training stage, MADX_THREADS the torch threads.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import adapterkit as ak
from adapterkit.train.data import get_task
from adapterkit.train.loop import TrainArgs, accuracy, classification_batches, fit, predict
from adapterkit.train.models import load_classifier, model_dir

STEPS = int(os.environ.get("MADX_STEPS", "200"))
OUT = Path(os.environ.get("MADX_OUT", "runs/madx"))
ARGS = {"sst2": TrainArgs(steps=STEPS, batch_size=32, max_length=64, lr=1e-3, progress=False),
        "rte": TrainArgs(steps=STEPS, batch_size=16, max_length=128, lr=1e-3, progress=False)}
LANG = ak.MethodUnion((ak.Bottleneck(reduction=2), ak.InvertibleAdapter()))


def mlm_batches(tok: Any, texts: list[str], size: int, seed: int) -> Iterator[dict[str, Any]]:
    """BERT's masking: 15% of the tokens are predicted; of those 80% become [MASK], 10% a random
    token and 10% stay."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    while True:
        enc = tok(rng.sample(texts, size), padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        ids = enc["input_ids"]
        special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (enc["attention_mask"] == 0)
        chosen = (torch.rand(ids.shape, generator=g) < 0.15) & ~special
        labels = ids.masked_fill(~chosen, -100)
        roll = torch.rand(ids.shape, generator=g)
        ids = ids.masked_fill(chosen & (roll < 0.8), tok.mask_token_id)
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        ids = torch.where(swap, torch.randint(len(tok), ids.shape, generator=g), ids)
        yield {**enc, "input_ids": ids, "labels": labels}


class MaskedLM(torch.nn.Module):
    """BERT's MLM loss computed on the masked positions only: the vocabulary projection (and
    the invertible adapter's inverse before it) runs on about 15% of the tokens."""

    def __init__(self, mlm: Any) -> None:
        super().__init__()
        self.mlm = mlm

    def forward(self, labels: torch.Tensor, **inputs: Any) -> Any:
        hidden = self.mlm.bert(**inputs).last_hidden_state  # (B, S, D)
        chosen = labels != -100
        logits = self.mlm.cls(hidden[chosen])  # (M, vocab), M masked tokens
        loss = torch.nn.functional.cross_entropy(logits, labels[chosen])
        return type("Output", (), {"loss": loss})()


def train_language_adapter(directory: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = model_dir("minilm")
    torch.manual_seed(0)
    model, tok = AutoModelForMaskedLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    kit = ak.AdapterKit(model)
    kit.add("lang", LANG)
    params = kit.train("lang")
    head = [p for p in model.cls.predictions.transform.parameters()]
    for p in head:
        p.requires_grad_(True)
    texts = [ex.texts[0] for ex in get_task("sst2").split("train")]
    texts += [t for ex in get_task("rte").split("train") for t in ex.texts]
    args = TrainArgs(steps=STEPS, batch_size=32, lr=1e-3, progress=False)
    result = fit(MaskedLM(model), params + head, mlm_batches(tok, texts, 32, 0), args,
                 "lang (MLM)")
    last = result.losses[-20:]
    print(f"lang: MLM loss {result.losses[0]:.2f} -> {sum(last) / len(last):.2f} "
          f"in {result.seconds:.0f}s")
    kit.save("lang", directory)


def evaluate(model: Any, tok: Any, task: str) -> float:
    dev = get_task(task).split("dev")
    return accuracy(predict(model, tok, dev, ARGS[task].max_length), dev)


def train_task(task: str, with_lang: bool) -> float:
    """Train a task adapter (stacked on ``lang`` or alone), save it, return its dev accuracy."""
    directory = OUT / (f"{task}-on-lang" if with_lang else task)
    model, tok = load_classifier("minilm", 2, seed=0)
    kit = ak.AdapterKit(model)
    if with_lang:
        kit.load(OUT / "lang", name="lang")
    if (directory / "adapter_config.json").is_file():
        kit.load(directory, name=task)
    else:
        kit.add(task, ak.Bottleneck(reduction=16))
        setup = ak.Stack("lang", task) if with_lang else None
        train = get_task(task).split("train")
        ak_args = ARGS[task]
        params = kit.train(task, train_also=("classifier",))
        if setup is not None:
            kit.activate(setup)
        fit(model, params, classification_batches(tok, train, ak_args), ak_args, task)
        kit.save(task, directory)
    kit.activate(ak.Stack("lang", task) if with_lang else task)
    return evaluate(model, tok, task)


def train_fusion(task: str) -> float:
    """Fuse the two stacked task adapters for ``task`` (fusion layer and head train)."""
    model, tok = load_classifier("minilm", 2, seed=0)
    kit = ak.AdapterKit(model)
    setup = ak.Stack("lang", ak.Fuse("sst2", "rte", name=f"fuse_{task}"))
    directory = OUT / f"fuse-{task}"
    if (directory / "setup.json").is_file():
        kit.load_setup(directory)  # the adapters, the fusion layer and its head
    else:
        kit.load(OUT / "lang", name="lang")
        for t in ("sst2", "rte"):
            kit.load(OUT / f"{t}-on-lang", name=t)
        params = kit.train_fusion(setup, train_also=("classifier",))
        train = get_task(task).split("train")
        fit(model, params, classification_batches(tok, train, ARGS[task]), ARGS[task],
            f"fuse {task}")
        kit.save_setup(directory)
    kit.activate(setup)
    return evaluate(model, tok, task)


def main() -> int:
    torch.set_num_threads(int(os.environ.get("MADX_THREADS", os.cpu_count() or 1)))
    OUT.mkdir(parents=True, exist_ok=True)
    if not (OUT / "lang" / "adapter_config.json").is_file():
        train_language_adapter(OUT / "lang")
    rows = []
    for task in ("sst2", "rte"):
        rows.append((f"{task} task adapter alone", task, train_task(task, with_lang=False)))
        rows.append((f"Stack(lang, {task})", task, train_task(task, with_lang=True)))
    for task in ("sst2", "rte"):
        rows.append((f"Stack(lang, Fuse(sst2, rte)) trained on {task}", task, train_fusion(task)))
    print(f"\nMiniLM, {STEPS} steps per stage; dev accuracy")
    print("| setup | task | dev accuracy |\n|---|---|---|")
    for setup, task, acc in rows:
        print(f"| {setup} | {task} | {100 * acc:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
