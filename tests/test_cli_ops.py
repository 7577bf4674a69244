"""``adapterkit extract`` and ``adapterkit quantize`` on a tiny local model directory."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import adapterkit as ak
from adapterkit.cli.main import main

WORDS = ["good", "bad", "great", "awful", "movie", "film", "fine", "dull", "a", "the", "is"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny BERT base directory and a 'fine-tuned' sequence classifier made from it."""
    root = tmp_path_factory.mktemp("tiny")
    base, ft = root / "base", root / "ft"
    base.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (base / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = T.BertTokenizerFast(vocab_file=str(base / "vocab.txt"))
    tok.save_pretrained(base)
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    T.BertModel(cfg).save_pretrained(base)
    model = T.BertForSequenceClassification.from_pretrained(base, num_labels=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".encoder." in name and name.endswith(".weight") and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(ft)
    tok.save_pretrained(ft)
    task = root / "task"
    task.mkdir()
    rows = ["sentence\tlabel"] + [f"{s}\t{lab}" for s, lab in
                                  [("a good movie", "pos"), ("a bad film", "neg")] * 6]
    for split in ("train", "dev"):
        (task / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return base, ft, task


def _logits(model, base_dir) -> torch.Tensor:
    tok = T.AutoTokenizer.from_pretrained(base_dir)
    enc = tok(["a good movie", "the film is dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits


def test_extract_full_rank_reproduces_the_finetune(dirs, tmp_path, capsys) -> None:
    base, ft, task = dirs
    out = tmp_path / "x"
    assert main(["extract", "--base", str(base), "--finetuned", str(ft), "--energy", "1",
                 "--task", str(task), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sites" in text and "saved to" in text
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["heads"] == ["classifier"] and meta["extraction"]["min_energy"] == pytest.approx(1)
    model = T.BertForSequenceClassification.from_pretrained(base, num_labels=2)  # new random head
    kit = ak.AdapterKit(model)
    kit.activate(kit.load(out))
    want = _logits(T.BertForSequenceClassification.from_pretrained(ft), base)
    torch.testing.assert_close(_logits(model, base), want, atol=1e-4, rtol=0)
    assert main(["eval", str(out), "--model", str(base)]) == 0
    assert "dev accuracy" in capsys.readouterr().out


def test_extract_by_energy_and_quantize(dirs, tmp_path, capsys) -> None:
    base, ft, _ = dirs
    out = tmp_path / "x"
    assert main(["extract", "--base", str(base), "--finetuned", str(ft), "--energy", "0.5",
                 "--targets", "attn.q", "attn.v", "--heads", "none", "--out", str(out)]) == 0
    assert "lowest energy" in capsys.readouterr().out
    assert json.loads((out / "adapter_config.json").read_text())["heads"] == []
    assert main(["quantize", str(out), "--bits", "2", "--out", str(tmp_path / "q")]) == 0
    assert "bytes" in capsys.readouterr().out
    meta = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    assert meta["quantization"]["bits"] == 2
    assert main(["info", str(tmp_path / "q")]) == 0
    assert "quantized 2 bits" in capsys.readouterr().out
    model = T.BertForSequenceClassification.from_pretrained(base, num_labels=2)
    assert ak.AdapterKit(model).load(tmp_path / "q") == "extracted"


def test_cli_ops_errors(dirs, tmp_path, capsys) -> None:
    base = dirs[0]
    assert main(["quantize", str(tmp_path), "--bits", "1", "--out", str(tmp_path / "q")]) == 2
    assert "missing adapter_config.json" in capsys.readouterr().err
    assert main(["extract", "--base", str(base), "--finetuned", str(base), "--out",
                 str(tmp_path / "x")]) == 2
    assert "no targeted weight differs" in capsys.readouterr().err


def test_combine_from_directories(dirs, tmp_path, capsys) -> None:
    base, ft, task = dirs
    x = tmp_path / "x"
    assert main(["extract", "--base", str(base), "--finetuned", str(ft), "--rank", "2",
                 "--targets", "attn.q", "attn.v", "--task", str(task), "--out", str(x)]) == 0
    torch.manual_seed(3)
    kit = ak.AdapterKit(T.BertForSequenceClassification.from_pretrained(base, num_labels=2))
    kit.add("y", ak.LoRA(r=3, targets=("attn.q", "attn.v")))
    with torch.no_grad():
        for p in kit.parameters("y"):
            p.normal_(0, 0.2)
    kit.save("y", tmp_path / "y")
    out = tmp_path / "c"
    assert main(["combine", f"{x}=0.7", f"{tmp_path / 'y'}=0.3", "--how", "cat", "--model",
                 str(base), "--head-from", str(x), "--out", str(out)]) == 0
    assert "cat of" in capsys.readouterr().out
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["heads"] == ["classifier"] and meta["training"]["task"] == str(task)
    assert meta["combined"]["sources"] == {str(x): 0.7, str(tmp_path / "y"): 0.3}
    # the same combination in Python, with x's head
    ref = ak.AdapterKit(T.BertForSequenceClassification.from_pretrained(base, num_labels=2))
    ref.load(tmp_path / "y", name="y")
    ref.load(x, name="x")
    ref.combine("c", {"x": 0.7, "y": 0.3}, how="cat")
    ref.activate("c")
    model = T.BertForSequenceClassification.from_pretrained(base, num_labels=2)
    fresh = ak.AdapterKit(model)
    fresh.activate(fresh.load(out))
    torch.testing.assert_close(_logits(model, base), _logits(ref.model, base), atol=1e-6, rtol=0)
    assert main(["eval", str(out), "--model", str(base)]) == 0


def test_combine_cli_errors(dirs, tmp_path, capsys) -> None:
    base = dirs[0]
    kit = ak.AdapterKit(T.BertForSequenceClassification.from_pretrained(base, num_labels=2))
    kit.add("a", ak.LoRA(r=2))
    kit.add("b", ak.Bottleneck(reduction=4))
    kit.save("a", tmp_path / "a")
    kit.save("b", tmp_path / "b")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["combine", a, b, "--out", str(tmp_path / "c")]) == 2
    assert "record no base model; pass --model" in capsys.readouterr().err
    assert main(["combine", a, b, "--model", str(base), "--out", str(tmp_path / "c")]) == 2
    assert "lora" in capsys.readouterr().err.lower()
    assert main(["combine", f"{a}=x", "--model", str(base), "--out", str(tmp_path / "c")]) == 2
    assert "numeric weight" in capsys.readouterr().err
    assert main(["combine", a, "--model", str(base), "--head-from", b,
                 "--out", str(tmp_path / "c")]) == 2
    assert "not one of the adapters" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
