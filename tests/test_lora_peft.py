"""LoRA against PEFT: the same trainable-parameter count and the same outputs for equal weights."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from peft import LoraConfig, get_peft_model

import adapterkit as ak

from .models import build, inputs_for, run

# the shape of all-MiniLM-L6-v2; random weights suffice for counting
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512)


def test_minilm_lora_qv_has_73728_parameters_like_peft() -> None:
    cfg = T.BertConfig(**MINILM_SHAPE)
    kit = ak.AdapterKit(T.BertModel(cfg))
    kit.add("a", ak.LoRA(r=8, alpha=16, targets=("attn.q", "attn.v")))
    ours = kit.summary()[0]["trainable"]
    peft_model = get_peft_model(T.BertModel(cfg), LoraConfig(r=8, lora_alpha=16,
                                                             target_modules=["query", "value"]))
    theirs = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad)
    assert ours == theirs == 73_728
    assert kit.summary()[0]["sites"] == 12


PEFT_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


@pytest.mark.parametrize("family", sorted(PEFT_TARGETS))
@pytest.mark.parametrize("rslora", [False, True])
def test_same_weights_same_outputs_as_peft(family: str, rslora: bool) -> None:
    peft_model = get_peft_model(build(family), LoraConfig(
        r=4, lora_alpha=8, use_rslora=rslora, target_modules=PEFT_TARGETS[family],
        fan_in_fan_out=family == "gpt2"))
    g = torch.Generator().manual_seed(0)
    ours_model = build(family)
    kit = ak.AdapterKit(ours_model)
    kit.add("a", ak.LoRA(r=4, alpha=8, use_rslora=rslora, targets=("attn.q", "attn.v")))
    ours = dict(ours_model.named_parameters())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" not in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            # base_model.model.<path>.lora_A.default.weight -> <path>.adapterkit.a.lora_A
            path, kind = name.removeprefix("base_model.model.").split(".lora_")
            ours[f"{path}.adapterkit.a.lora_{kind[0]}"].copy_(p)
    kit.activate("a")
    x = inputs_for(family)
    peft_model.eval()
    torch.testing.assert_close(run(ours_model, family, x), run(peft_model, family, x),
                               atol=1e-5, rtol=0)
