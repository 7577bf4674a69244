"""Tiny randomly initialised models, one per layout family plus a plain MLP, with inputs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as T
from torch import nn

logging.getLogger("transformers").setLevel(logging.ERROR)
T.logging.set_verbosity_error()

H, L, NH, FF, V = 32, 2, 4, 64, 100
_ENC = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
            intermediate_size=FF, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            max_position_embeddings=64, num_labels=3)
_DEC = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
            num_key_value_heads=2, intermediate_size=FF, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


@dataclass(frozen=True)
class TinyModel:
    family: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], dict[str, torch.Tensor]]
    output: Callable[[Any], torch.Tensor]
    head: tuple[str, ...] = ()
    decoder: bool = False
    lora_targets: tuple[str, ...] | None = None  # None: the layout roles
    bottleneck_targets: tuple[str, ...] | None = None


def _ids(g: torch.Generator, batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(5, V, (batch, length), generator=g)


def _text(g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = _ids(g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _pixels(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def _clip() -> nn.Module:
    text = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                intermediate_size=FF, max_position_embeddings=16, bos_token_id=0,
                eos_token_id=2, pad_token_id=1)
    vision = dict(image_size=16, patch_size=4, hidden_size=H, num_hidden_layers=L,
                  num_attention_heads=NH, intermediate_size=FF)
    return T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


def _whisper() -> nn.Module:
    cfg = T.WhisperConfig(
        vocab_size=V, d_model=H, encoder_layers=L, decoder_layers=L, encoder_attention_heads=NH,
        decoder_attention_heads=NH, encoder_ffn_dim=FF, decoder_ffn_dim=FF, num_mel_bins=8,
        max_source_positions=16, max_target_positions=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1, suppress_tokens=None,
        begin_suppress_tokens=None, dropout=0.0,
    )
    return T.WhisperForConditionalGeneration(cfg)


def _whisper_inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_features": torch.randn(2, 8, 32, generator=g),
            "decoder_input_ids": _ids(g, 2, 4)}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _decoder(family: str, cfg_cls: type, **extra: Any) -> TinyModel:
    return TinyModel(
        family, lambda: T.AutoModelForCausalLM.from_config(cfg_cls(**{**_DEC, **extra})),
        lambda g: {"input_ids": _ids(g, 2, 6)}, lambda o: o.logits, decoder=True,
    )


def _logits(o: Any) -> torch.Tensor:
    return o.logits


MODELS: dict[str, TinyModel] = {
    "bert": TinyModel("bert", lambda: T.BertForSequenceClassification(T.BertConfig(**_ENC)),
                      _text, _logits, head=("classifier",)),
    "roberta": TinyModel("roberta",
                         lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**_ENC)),
                         _text, _logits, head=("classifier",)),
    "xlm-roberta": TinyModel(
        "xlm-roberta",
        lambda: T.XLMRobertaForSequenceClassification(T.XLMRobertaConfig(**_ENC)),
        _text, _logits, head=("classifier",)),
    "gpt2": TinyModel(
        "gpt2",
        lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=NH,
                                               n_positions=64, bos_token_id=1, eos_token_id=2,
                                               pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                               attn_pdrop=0.0)),
        lambda g: {"input_ids": _ids(g, 2, 6)}, _logits, decoder=True),
    "llama": _decoder("llama", T.LlamaConfig),
    "mistral": _decoder("mistral", T.MistralConfig),
    "qwen2": _decoder("qwen2", T.Qwen2Config),
    "qwen3": _decoder("qwen3", T.Qwen3Config, head_dim=8),
    "vit": TinyModel(
        "vit",
        lambda: T.ViTForImageClassification(T.ViTConfig(
            image_size=16, patch_size=4, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
            intermediate_size=FF, num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)),
        _pixels, _logits, head=("classifier",)),
    "clip": TinyModel("clip", _clip, lambda g: {**_text(g), **_pixels(g)},
                      lambda o: torch.cat([o.text_embeds, o.image_embeds], -1),
                      head=("visual_projection",)),
    "whisper": TinyModel("whisper", _whisper, _whisper_inputs, _logits),
    "mlp": TinyModel("mlp", _mlp, lambda g: {"input": torch.randn(4, 16, generator=g)},
                     lambda o: o, head=("4",), lora_targets=("0", "2"),
                     bottleneck_targets=(r"[02]",)),
}


def build(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[family].build().eval()


def run(model: nn.Module, family: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    spec = MODELS[family]
    out = model(inputs["input"]) if family == "mlp" else model(**inputs)
    return spec.output(out)


def inputs_for(family: str, seed: int = 1) -> dict[str, torch.Tensor]:
    return MODELS[family].inputs(torch.Generator().manual_seed(seed))
