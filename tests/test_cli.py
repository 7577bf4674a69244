"""The CLI end to end on a tiny local model directory and a tiny TSV task."""

from __future__ import annotations

import json

import pytest
import transformers as T

from adapterkit.cli.main import main

WORDS = ["good", "bad", "great", "awful", "movie", "film", "fine", "dull", "a", "the", "is"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    T.BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    T.BertModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy-task")
    pos, neg = ["a good movie", "a great film", "the film is fine"], ["a bad movie", "dull film"]
    rows = [(s, "pos") for s in pos] * 8 + [(s, "neg") for s in neg] * 8
    for split in ("train", "dev"):
        lines = ["sentence\tlabel"] + [f"{s}\t{lab}" for s, lab in rows]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_train_eval_info(model_dir, task_dir, tmp_path, capsys, method: str) -> None:
    out = tmp_path / "adapter"
    assert main(["train", "--model", str(model_dir), "--task", str(task_dir), "--method", method,
                 "--steps", "40", "--batch-size", "8", "--lr", "1e-2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dev accuracy" in text and "s/step" in text
    meta = json.loads((out / "adapter_config.json").read_text())
    acc = meta["training"]["dev_accuracy"]
    assert meta["training"]["dev_examples"] == 40
    assert meta["heads"] == ["classifier"]
    assert main(["eval", str(out)]) == 0
    # a fresh model with a different random head reproduces the recorded accuracy
    assert f"dev accuracy {acc:.4f} on 40 examples" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert f"method   {method}" in info and "head parameters" in info


def test_cli_reports_bad_input(tmp_path, task_dir, capsys) -> None:
    assert main(["info", str(tmp_path)]) == 2
    assert "missing adapter_config.json" in capsys.readouterr().err
    assert main(["train", "--model", str(tmp_path), "--task", str(task_dir),
                 "--out", str(tmp_path / "o")]) == 2
    assert "neither 'minilm' nor a directory holding config.json" in capsys.readouterr().err
