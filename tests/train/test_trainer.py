"""KitTrainer and the TRL variant: adapter-only checkpoints, exact resume, the best checkpoint
restored, bf16 with gradient checkpointing, a quantized base, and SFTTrainer."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.train import KitTrainer

from ..models import build

warnings.filterwarnings("ignore")


def _data(n: int = 24, length: int = 8) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(5, 100, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    return rows


def _args(out: Path, **kw) -> T.TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2,
                max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1, seed=0,
                report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                lr_scheduler_type="linear", warmup_steps=0)
    base.update(kw)
    return T.TrainingArguments(**base)


def _kit_model():
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4, targets=("attn.q", "attn.v")))
    kit.add("other", ak.LoRA(r=2, targets=("attn.k",)))  # frozen, never saved
    return model, kit


def _adapter_state(kit) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in
            ((f"{h}.{n}", p) for h, m in kit.record("a").modules.items()
             for n, p in m.named_parameters())}


def test_checkpoints_hold_only_the_adapter_and_resume_exactly(tmp_path) -> None:
    model, kit = _kit_model()
    trainer = KitTrainer(model=model, adapter="a", args=_args(tmp_path / "run"), train_dataset=_data())
    trainer.train()
    full = _adapter_state(kit)
    ckpt = tmp_path / "run" / "checkpoint-3"
    saved = load_file(ckpt / "adapter.safetensors")
    assert set(saved) == set(full)  # adapter "a" alone: no base weight, not "other"
    assert not (ckpt / "model.safetensors").exists()
    assert (ckpt / "optimizer.pt").exists()

    model2, kit2 = _kit_model()
    again = KitTrainer(model=model2, adapter="a", args=_args(tmp_path / "resumed"), train_dataset=_data())
    again.train(resume_from_checkpoint=str(ckpt))
    resumed = _adapter_state(kit2)
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.equal(resumed[key], full[key]), key
    assert again.state.global_step == 6


def test_best_checkpoint_is_restored(tmp_path) -> None:
    model, kit = _kit_model()
    # the "best" eval loss is the highest one, so the best checkpoint is not the last
    args = _args(tmp_path / "run", max_steps=6, save_steps=2, eval_strategy="steps", eval_steps=2,
                 load_best_model_at_end=True, metric_for_best_model="eval_loss",
                 greater_is_better=True, learning_rate=3e-2)
    trainer = KitTrainer(model=model, adapter="a", args=args, train_dataset=_data(), eval_dataset=_data(8))
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    last = load_file(tmp_path / "run" / "checkpoint-6" / "adapter.safetensors")
    want = load_file(best / "adapter.safetensors")
    assert best.name != "checkpoint-6"
    now = _adapter_state(kit)
    assert all(torch.equal(now[k], want[k]) for k in now)
    assert any(not torch.equal(now[k], last[k]) for k in now)


def test_bf16_gradient_checkpointing_and_peft_format(tmp_path) -> None:
    model, kit = _kit_model()
    args = _args(tmp_path / "run", bf16=True, gradient_checkpointing=True,
                 gradient_checkpointing_kwargs={"use_reentrant": True}, max_steps=3, save_steps=3)
    before = _adapter_state(kit)
    trainer = KitTrainer(model=model, adapter="a", args=args, train_dataset=_data(), save_format="peft")
    trainer.train()
    after = _adapter_state(kit)
    # with reentrant checkpointing, the frozen inputs must be made to require grad to get here
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert {p.dtype for p in kit.parameters("a")} == {torch.float32}
    ckpt = tmp_path / "run" / "checkpoint-3"
    assert (ckpt / "adapter_model.safetensors").exists()
    fresh = build("llama")
    fk = ak.AdapterKit(fresh)
    name = fk.load(ckpt)
    loaded = {f"{h}.{n}": p for h, m in fk.record(name).modules.items() for n, p in m.named_parameters()}
    assert loaded.keys() == after.keys()
    assert all(torch.equal(loaded[k], after[k]) for k in after)


def test_quantized_base_trains(tmp_path) -> None:
    d = tmp_path / "base"
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=64,
                        tie_word_embeddings=False)
    T.LlamaForCausalLM(cfg).save_pretrained(d)
    q = T.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_compute_dtype=torch.float32)
    model = T.AutoModelForCausalLM.from_pretrained(d, quantization_config=q, device_map="cpu")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4, targets=("all-linear",)))
    before = _adapter_state(kit)
    trainer = KitTrainer(model=model, adapter="a", args=_args(tmp_path / "run", max_steps=2, save_steps=2),
                         train_dataset=_data())
    trainer.train()
    after = _adapter_state(kit)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "run" / "checkpoint-2" / "adapter.safetensors").exists()


def test_sft_trainer_variant_trains(tmp_path, smollm2_tokenizer) -> None:
    trl = pytest.importorskip("trl", reason="trl is in the dev and train extras")
    from datasets import Dataset

    from adapterkit.train import KitSFTTrainer

    tok = smollm2_tokenizer
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = T.LlamaForCausalLM(cfg)
    kit = ak.AdapterKit(model)
    kit.add("sft", ak.LoRA(r=4, targets=("attn.q", "attn.v")))
    rows = [{"prompt": f"Item {i}: what is the code word?", "completion": " Zebra"} for i in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4,
                         learning_rate=1e-2, max_steps=4, save_steps=4, logging_steps=1,
                         report_to="none", use_cpu=True, max_length=64, disable_tqdm=True)
    before = _adapter_state_of(kit, "sft")
    trainer = KitSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=tok)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = _adapter_state_of(kit, "sft")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = load_file(tmp_path / "sft" / "checkpoint-4" / "adapter.safetensors")
    assert set(saved) == set(after)
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any()  # completion-only loss: prompt tokens masked


def _adapter_state_of(kit, name: str) -> dict[str, torch.Tensor]:
    return {f"{h}.{n}": p.detach().clone() for h, m in kit.record(name).modules.items()
            for n, p in m.named_parameters()}
