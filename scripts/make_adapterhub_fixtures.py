"""Generate small AdapterHub (`adapters` library) fixtures for adapterkit tests.

Runs inside a separate virtual environment that has `adapters` (and the
`transformers` version it pins) installed -- see make_adapterhub_fixtures.sh.

Usage: python scripts/make_adapterhub_fixtures.py OUT_DIR

Writes into OUT_DIR:
  base_model.safetensors      tiny random BertModel state dict (before adapters)
  base_config.json            its BertConfig
  seq_bn/                     SeqBnConfig (Pfeiffer)        saved as pytorch_adapter.bin
  double_seq_bn/              DoubleSeqBnConfig (Houlsby)   saved as pytorch_adapter.bin
  par_bn/                     ParBnConfig (parallel)        saved as pytorch_adapter.bin
  lora_bin/                   LoRAConfig(r=4, alpha=8)      saved as pytorch_adapter.bin
  lora_safetensors/           same LoRA adapter             saved as adapter.safetensors
  expected_outputs.safetensors
  VERSIONS.json
"""

import json
import os
import shutil
import sys

import adapters
import torch
import transformers
from adapters import DoubleSeqBnConfig, LoRAConfig, ParBnConfig, SeqBnConfig
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

SEED = 0
PARAM_STD = 0.1

# (adapter name, config factory, [(subdir, use_safetensors), ...])
ADAPTERS = [
    ("seq_bn", lambda: SeqBnConfig(reduction_factor=4), [("seq_bn", False)]),
    ("double_seq_bn", lambda: DoubleSeqBnConfig(reduction_factor=4), [("double_seq_bn", False)]),
    ("par_bn", lambda: ParBnConfig(reduction_factor=4), [("par_bn", False)]),
    ("lora", lambda: LoRAConfig(r=4, alpha=8), [("lora_bin", False), ("lora_safetensors", True)]),
]


def make_config():
    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def make_inputs():
    g = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(1, 100, (2, 7), generator=g, dtype=torch.long)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0  # mask the last 2 tokens of the second row
    input_ids[1, 5:] = 0  # pad_token_id
    return input_ids, attention_mask


def fresh_base(config, base_sd):
    model = BertModel(config)
    missing, unexpected = model.load_state_dict(base_sd, strict=True)
    assert not missing and not unexpected
    model.eval()
    return model


def adapter_param_filter(name):
    # same rule as adapters.loading.AdapterLoader.filter_func
    pats = [
        "_adapters.{}.",
        ".adapters.{}.",
        ".prefix_tunings.{}.",
        ".prefix_gates.{}.",
        ".loras.{}.",
        ".refts.{}.",
        ".prompt_tunings.{}.",
        ".shared_parameters.{}.",
    ]
    pats = [p.format(name) for p in pats]
    return lambda k: any(p in k for p in pats)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/adapterhub"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)

    config = make_config()
    base = BertModel(config)
    base.eval()
    base_sd = {k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}
    save_file(base_sd, os.path.join(out, "base_model.safetensors"))
    config.to_json_file(os.path.join(out, "base_config.json"))

    input_ids, attention_mask = make_inputs()
    expected = {"input_ids": input_ids, "attention_mask": attention_mask}
    with torch.no_grad():
        expected["base_last_hidden_state"] = base(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state.contiguous()

    for i, (name, cfg_fn, saves) in enumerate(ADAPTERS):
        model = fresh_base(config, base_sd)
        adapters.init(model)
        model.add_adapter(name, config=cfg_fn())
        # randomise ALL parameters of this adapter so it is far from identity
        g = torch.Generator().manual_seed(1000 + i)
        keep = adapter_param_filter(name)
        n_set = 0
        with torch.no_grad():
            for k, p in model.named_parameters():
                if keep(k):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * PARAM_STD)
                    n_set += 1
        assert n_set > 0, name
        model.set_active_adapters(name)
        model.eval()
        with torch.no_grad():
            h = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        diff = (h - expected["base_last_hidden_state"]).abs().max().item()
        print(f"{name}: {n_set} adapter tensors randomised, max |adapter - base| = {diff:.4f}")
        assert diff > 1e-2, f"adapter {name} looks like identity"
        expected[f"{name}_last_hidden_state"] = h.contiguous()

        for subdir, use_st in saves:
            d = os.path.join(out, subdir)
            if os.path.exists(d):
                shutil.rmtree(d)
            model.save_adapter(d, name, use_safetensors=use_st)

            # round trip through the library's own loader as a sanity check
            m2 = fresh_base(config, base_sd)
            adapters.init(m2)
            loaded = m2.load_adapter(d, use_safetensors=use_st, set_active=True)
            assert loaded == name, loaded
            m2.eval()
            with torch.no_grad():
                h2 = m2(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            err = (h2 - h).abs().max().item()
            print(f"  saved {subdir}/ {sorted(os.listdir(d))}, reload max err {err:.2e}")
            assert err < 1e-6

    save_file(expected, os.path.join(out, "expected_outputs.safetensors"))

    versions = {
        "adapters": adapters.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "attn_implementation": base.config._attn_implementation,
        "seed": SEED,
        "adapter_param_std": PARAM_STD,
    }
    with open(os.path.join(out, "VERSIONS.json"), "w") as f:
        json.dump(versions, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
