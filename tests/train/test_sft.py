"""Causal-LM SFT on SmolLM2-135M-Instruct: prompt masking, held-out loss going down, the saved
adapter reloading to the same generations, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import adapterkit as ak
from adapterkit.cli.main import main
from adapterkit.train.evaluate import generate, heldout_loss
from adapterkit.train.loop import TrainArgs
from adapterkit.train.sft import IGNORE, tokenize
from adapterkit.train.sft_run import train_sft

from .conftest import fruit_records, write_jsonl


def _examples(tok, rows):
    return [tokenize(tok, r, "prompt-completion", 64) for r in rows]


def test_prompt_tokens_are_masked(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    for row in fruit_records(4):
        ex = tokenize(tok, row, "prompt-completion", 64)
        prompt = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                         add_generation_prompt=True, tokenize=False)
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert list(ex.input_ids[:n]) == tok(prompt, add_special_tokens=False)["input_ids"]
        assert all(label == IGNORE for label in ex.labels[:n])  # every prompt token
        assert list(ex.labels[n:]) == list(ex.input_ids[n:])  # every completion token
        assert tok.decode(ex.input_ids[n:]).startswith("Zebra<|im_end|>")
        assert ex.prompt == ex.input_ids[:n]


def test_chat_trains_every_assistant_turn_only(smollm2_tokenizer) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "bye"}, {"role": "assistant", "content": "Bye."}]}
    ex = tokenize(smollm2_tokenizer, chat, "chat", 128)
    trained = smollm2_tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    assert trained == "Hello!<|im_end|>\nBye.<|im_end|>\n"
    assert ex.answer == "Bye."


def test_sft_lowers_heldout_loss_and_reloads(smollm2_path, smollm2_tokenizer, tmp_path) -> None:
    tok = smollm2_tokenizer
    train, dev = _examples(tok, fruit_records(16)), _examples(tok, fruit_records(4, offset=100))
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    kit = ak.AdapterKit(model)
    kit.add("fruit", ak.LoRA(r=4, alpha=8, targets=("attn.q", "attn.v")))
    args = TrainArgs(steps=6, batch_size=4, lr=5e-3, warmup=0.0, progress=False, eval_batch_size=4)
    report = train_sft(kit, "fruit", tok, train, dev, args, generate_limit=4)
    assert report.after["loss"] < report.before["loss"] - 0.5, (report.before, report.after)
    assert report.accuracy["graded"] == 4
    prompts = [e.prompt for e in dev[:2]]
    want = generate(model, tok, prompts, 6)
    kit.save("fruit", tmp_path / "fruit")

    fresh = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    fresh_kit = ak.AdapterKit(fresh)
    base_gen = generate(fresh, tok, prompts, 6)
    name = fresh_kit.load(tmp_path / "fruit")
    fresh_kit.activate(name)
    assert generate(fresh, tok, prompts, 6) == want
    assert base_gen != want  # the adapter changed what the model says
    again = heldout_loss(fresh, dev, tok.pad_token_id, 4)
    assert again["loss"] == pytest.approx(report.after["loss"], abs=1e-4)


def test_cli_sft_chat(smollm2_path, tmp_path, capsys) -> None:
    rows = [{"messages": [{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["completion"]}]}
            for r in fruit_records(12)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "adapter"
    assert main(["train", "--model", "smollm2", "--data", str(data), "--format", "chat",
                 "--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--max-length", "64",
                 "--generate-limit", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held-out loss" in text and "exact match" in text and "generated" in text
    meta = json.loads((out / "adapter_config.json").read_text())
    training = meta["training"]
    assert training["format"] == "chat" and training["dev_examples"] == 1
    assert training["train_examples"] == 11
    assert meta["heads"] == []
    assert torch.isfinite(torch.tensor(training["heldout_loss"]))
    assert main(["eval", str(out)]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_generate_keeps_the_prompts_order() -> None:
    """Prompts are batched by length, and the continuations come back in the callers' order."""
    from types import SimpleNamespace

    from ..models import build

    model = build("llama")
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15]]
    forward = generate(model, tok, prompts, max_new_tokens=3, batch_size=1)
    backward = generate(model, tok, prompts[::-1], max_new_tokens=3, batch_size=1)
    one_by_one = [generate(model, tok, [p], max_new_tokens=3)[0] for p in prompts]
    assert forward == backward[::-1] == one_by_one
    assert len({tuple(g) for g in forward}) > 1  # different prompts, different continuations
