"""A tiny random llama with an offline word-level tokenizer and a chat template, saved as a
transformers directory, and adapters of several methods saved beside it."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

import adapterkit as ak

from ..helpers import perturb

WORDS = [f"w{i}" for i in range(90)]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONTEXT = 256

ADAPTERS = {
    "lora": ak.LoRA(r=4, targets=("attn.q", "attn.v", "ffn.up")),
    "lora2": ak.LoRA(r=2, targets=("attn.q", "attn.v")),
    "ia3": ak.IA3(),
    "bottleneck": ak.Bottleneck(reduction=4),
    "prefix": ak.PrefixTuning(num_tokens=3),
    "prompt": ak.PromptTuning(num_tokens=4),
}

STD = {"ia3": 0.8, "bottleneck": 0.01}


def tokenizer() -> T.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>", pad_token="<pad>")
    fast.chat_template = TEMPLATE
    return fast


def model(seed: int = 0) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                        max_position_embeddings=CONTEXT, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0, tie_word_embeddings=False)
    return T.LlamaForCausalLM(cfg).eval()


def save_model(directory: Path, seed: int = 0) -> Path:
    m = model(seed)
    m.generation_config.eos_token_id = 2
    m.save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    return directory


def save_adapters(directory: Path, names: list[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Each adapter of ADAPTERS (or ``names``) on a fresh copy of the model, perturbed so it changes
    the outputs, saved to ``directory/<name>``."""
    m = model(seed)
    kit = ak.AdapterKit(m)
    out = {}
    for i, name in enumerate(names or list(ADAPTERS)):
        kit.add(name, ADAPTERS[name])
        perturb(kit, name, std=STD.get(name, 0.6), seed=10 + i)
        out[name] = directory / name
        kit.save(name, out[name])
    return out
