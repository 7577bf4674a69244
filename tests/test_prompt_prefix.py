"""Prompt and prefix tuning: parity with PEFT, generate(), save/load, folding, refusals.

Parity tests build the same tiny model twice, add our adapter to one and PEFT's to the other,
give PEFT's random weights, copy them into ours and compare PEFT's ``PeftModel`` forward (which
is where PEFT adds prompts and prefixes) with the plain model carrying our adapter.
"""

from __future__ import annotations

from typing import Any

import peft
import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.io import WEIGHTS_FILE

from .helpers import peft_cache_issue, peft_pair, perturb
from .models import build, inputs_for

# PEFT drops the position_ids generate() passes to a prompt-tuned model, with a warning
pytestmark = pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning")

P = 4
TOL = 1e-5
TASKS = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS"}


def _inputs(family: str) -> dict[str, torch.Tensor]:
    """Token ids with a padded row (and token type ids on BERT), so the mask matters."""
    x = inputs_for(family)
    mask = torch.ones_like(x["input_ids"])
    mask[1, -2:] = 0
    x["attention_mask"] = mask
    if family == "bert":
        x["token_type_ids"] = torch.zeros_like(mask).index_fill_(1, torch.tensor([4, 5]), 1)
    return x


def _pair(family: str, config: Any, peft_config: Any) -> tuple[nn.Module, ak.AdapterKit, Any]:
    ours, kit, theirs = peft_pair(family, config, peft_config)
    g = torch.Generator().manual_seed(0)
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return ours, kit, theirs


def _compare(family: str, ours: nn.Module, theirs: Any, what: str) -> float:
    x = _inputs(family)
    if family == "llama":  # PEFT pads causal-LM labels with -100 for the prompt; so do we
        x["labels"] = x["input_ids"].masked_fill(x["attention_mask"] == 0, -100)
    with torch.no_grad():
        out, ref = ours(**x), theirs(**x)
        a, b = out.logits, ref.logits
        base = build(family)(**x).logits
    if family == "llama":
        assert abs(out.loss.item() - ref.loss.item()) <= TOL
    assert a.shape == b.shape, (a.shape, b.shape)
    effect = (a[:, -base.shape[1]:] - base).abs().max().item() if a.dim() == 3 else \
        (a - base).abs().max().item()
    assert effect > 10 * TOL, f"{what}: the adapter changed the output by only {effect:.2e}"
    err = (a - b).abs().max().item()
    print(f"{what}: max |ours - PEFT| = {err:.2e}")
    assert err <= TOL, f"{what}: max abs error {err:.2e} > {TOL}"
    return err


@pytest.mark.parametrize("family", list(TASKS))
def test_prompt_tuning_matches_peft(family: str) -> None:
    ours, kit, theirs = _pair(family, ak.PromptTuning(num_tokens=P), peft.PromptTuningConfig(
        task_type=TASKS[family], num_virtual_tokens=P))
    (module,) = kit.record("a").modules.values()
    with torch.no_grad():
        module.prompt.copy_(theirs.prompt_encoder["default"].embedding.weight)
    _compare(family, ours, theirs, f"prompt {family}")


@pytest.mark.parametrize("family", list(TASKS))
def test_prefix_tuning_matches_peft(family: str) -> None:
    if family == "bert" and (why := peft_cache_issue()):
        pytest.skip(why)
    ours, kit, theirs = _pair(family, ak.PrefixTuning(num_tokens=P), peft.PrefixTuningConfig(
        task_type=TASKS[family], num_virtual_tokens=P, prefix_projection=False))
    (module,) = kit.record("a").modules.values()
    with torch.no_grad():
        module.prefix.copy_(theirs.prompt_encoder["default"].embedding.weight)
    _compare(family, ours, theirs, f"prefix {family}")


@pytest.mark.parametrize("family", list(TASKS))
def test_reparameterized_prefix_matches_peft(family: str) -> None:
    if family == "bert" and (why := peft_cache_issue()):
        pytest.skip(why)
    ours, kit, theirs = _pair(
        family, ak.PrefixTuning(num_tokens=P, reparameterize=True, hidden=16),
        peft.PrefixTuningConfig(task_type=TASKS[family], num_virtual_tokens=P,
                                prefix_projection=True, encoder_hidden_size=16))
    (module,) = kit.record("a").modules.values()
    enc = theirs.prompt_encoder["default"]
    with torch.no_grad():
        module.embedding.copy_(enc.embedding.weight)
        module.mlp.load_state_dict(enc.transform.state_dict())
    _compare(family, ours, theirs, f"prefix reparameterized {family}")


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_generate_matches_peft(method: str) -> None:
    if why := peft_cache_issue():
        pytest.skip(why)
    if method == "prompt":
        cfg, pcfg, key = ak.PromptTuning(num_tokens=P), peft.PromptTuningConfig, "prompt"
    else:
        cfg, pcfg, key = ak.PrefixTuning(num_tokens=P), peft.PrefixTuningConfig, "prefix"
    ours, kit, theirs = _pair("llama", cfg, pcfg(task_type="CAUSAL_LM", num_virtual_tokens=P))
    (module,) = kit.record("a").modules.values()
    with torch.no_grad():
        getattr(module, key).copy_(theirs.prompt_encoder["default"].embedding.weight)
    ids = inputs_for("llama")["input_ids"]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours.generate(ids, **kw), theirs.generate(input_ids=ids, **kw))


# -- generate(): with the KV cache equals greedy decoding without it -------------------------
def _greedy(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding without a cache, positions from the mask as generate() makes them."""
    with torch.no_grad():
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                           use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return ids


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("config", [ak.PromptTuning(num_tokens=P), ak.PrefixTuning(num_tokens=P),
                                    ak.PrefixTuning(num_tokens=P, reparameterize=True, hidden=8)],
                         ids=["prompt", "prefix", "prefix-reparam"])
@pytest.mark.parametrize("padded", [False, True])
def test_generate_with_cache_equals_greedy(family: str, config: Any, padded: bool) -> None:
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", config)
    perturb(kit, "a", std=0.5)
    kit.activate("a")
    ids = inputs_for(family)["input_ids"]
    mask = torch.ones_like(ids)
    if padded:  # left padding
        mask[0, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
              eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    out = model.generate(ids, **kw)
    assert torch.equal(out.sequences, _greedy(model, ids, mask, 4))
    # without the cache: each step starts afresh, whatever generate() hands back
    assert torch.equal(model.generate(ids, use_cache=False, **kw).sequences, out.sequences)
    kit.activate(None)
    plain = model.generate(ids, **kw)
    assert torch.equal(plain.sequences, _greedy(model, ids, mask, 4))
    assert not torch.equal(torch.stack(plain.logits), torch.stack(out.logits))


# -- folding, saving -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_fold_keeps_outputs_and_saves_only_prefixes(family: str, tmp_path) -> None:
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.PrefixTuning(num_tokens=P, reparameterize=True, hidden=8))
    perturb(kit, "a", std=0.3)
    kit.activate("a")
    x = _inputs(family)
    with torch.no_grad():
        want = model(**x).logits
    kit.fold("a")
    (module,) = kit.record("a").modules.values()
    assert [n for n, _ in module.named_parameters()] == ["prefix"]
    assert kit.config("a") == ak.PrefixTuning(num_tokens=P, reparameterize=False, hidden=8)
    with torch.no_grad():
        got = model(**x).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    kit.save("a", tmp_path / "a")
    from safetensors.torch import load_file

    assert [k.rsplit(".", 1)[-1] for k in load_file(tmp_path / "a" / WEIGHTS_FILE)] == ["prefix"]
    fresh = build(family)
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "a")
    kit2.activate("a")
    with torch.no_grad():
        assert torch.equal(fresh(**x).logits, got)


def test_prompt_vocab_init_copies_vocabulary_rows() -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.PromptTuning(num_tokens=6, init="vocab"))
    (module,) = kit.record("a").modules.values()
    vocab = model.get_input_embeddings().weight
    assert all(bool((vocab == row).all(-1).any()) for row in module.prompt)


# -- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "clip", "whisper", "mlp"])
@pytest.mark.parametrize("config", [ak.PromptTuning(), ak.PrefixTuning()], ids=["prompt", "prefix"])
def test_unsupported_families_are_refused(family: str, config: Any) -> None:
    model = build(family)
    keys = set(model.state_dict())
    with pytest.raises(ak.TargetError, match=r"supports the layout families \['bert'"):
        ak.AdapterKit(model).add("a", config)
    assert set(model.state_dict()) == keys


def test_not_mergeable_and_only_flat_compositions() -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("p", ak.PromptTuning(num_tokens=P))
    kit.add("q", ak.PrefixTuning(num_tokens=P))
    kit.add("l", ak.LoRA(r=2))
    for name in ("p", "q"):
        with pytest.raises(ak.NotMergeableError, match="cannot be merged"):
            kit.merge(name)
    with pytest.raises(ak.CompositionError, match="one prompt/prefix adapter"):
        kit.activate(["p", "q"])
    with pytest.raises(ak.CompositionError, match="plain name or in a Stack"):
        kit.activate(ak.Average("p", "l"))
    with pytest.raises(ak.CompositionError, match="several prompt/prefix adapters"):
        kit.activate(ak.Route([ak.Stack("p", "q"), "l"]))  # per-row routing: see test_route_inputs
    kit.activate(["l", "q"])  # a LoRA and a prefix together
    perturb(kit, "l")
    perturb(kit, "q", seed=3)
    x = inputs_for("llama")
    with torch.no_grad():
        both = model(**x).logits
        kit.activate("q")
        assert not torch.equal(model(**x).logits, both)


@pytest.mark.parametrize("make", [lambda: ak.PromptTuning(num_tokens=0),
                                  lambda: ak.PromptTuning(init="text"),
                                  lambda: ak.PrefixTuning(num_tokens=-1),
                                  lambda: ak.PrefixTuning(hidden=0),
                                  lambda: ak.PrefixTuning(reparameterize="yes")])
def test_bad_configs(make) -> None:
    with pytest.raises(ak.ConfigError):
        make()


def test_fold_refused_for_other_methods() -> None:
    kit = ak.AdapterKit(build("llama"))
    kit.add("l", ak.LoRA(r=2))
    with pytest.raises(ak.ConfigError, match="no reparameterisation"):
        kit.fold("l")
