"""Per-example routing of prompt and prefix tuning: every row of a routed batch equals that example
alone with its adapter (or none), in plain forwards, generate() and training; the sequence-output
layout is the one docs/composition.md describes."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak

from .helpers import perturb
from .models import MODELS, V, build, run

TOL = {"atol": 1e-5, "rtol": 1e-5}
S = 6
CONFIGS = {"pa": ak.PrefixTuning(num_tokens=3), "pb": ak.PrefixTuning(num_tokens=5),
           "pr": ak.PrefixTuning(num_tokens=2, reparameterize=True, hidden=8),
           "qa": ak.PromptTuning(num_tokens=3), "qb": ak.PromptTuning(num_tokens=5),
           "lo": ak.LoRA(r=2), "bn": ak.Bottleneck(reduction=4)}


def _kit(family: str) -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = build(family)
    kit = ak.AdapterKit(model)
    for i, (name, config) in enumerate(CONFIGS.items()):
        kit.add(name, config)
        perturb(kit, name, std=0.5, seed=i)
    return model, kit


def _batch(family: str, n: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, V, (n, S), generator=torch.Generator().manual_seed(3))
    if MODELS[family].decoder:
        return {"input_ids": ids}
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _alone(model, kit, family: str, batch: dict, ids: list, **kw) -> list[torch.Tensor]:
    """Each example alone (batch 1) with its own entry activated; the outputs keep their own
    sequence lengths (a prompt adds its tokens)."""
    outs = []
    with torch.no_grad():
        for i, entry in enumerate(ids):
            kit.activate(None if entry == "__base__" else entry)
            outs.append(_out(model, family, {k: v[i:i + 1] for k, v in batch.items()}, **kw)[0])
    kit.activate(None)
    return outs


def _out(model, family: str, batch: dict, hidden: bool = False) -> torch.Tensor:
    if hidden:
        return model(**batch, output_hidden_states=True).hidden_states[-1]
    return run(model, family, batch)


def _prompt_tokens(kit: ak.AdapterKit, entry) -> int:
    names = [entry] if isinstance(entry, str) else [c for c in entry.children if isinstance(c, str)]
    return sum(kit.config(n).num_tokens for n in names
               if n != "__base__" and isinstance(kit.config(n), ak.PromptTuning))


def _assert_effect(alone: list[torch.Tensor], ids: list) -> None:
    """Every adapter row differs from the base row: the comparison can fail."""
    base = alone[ids.index("__base__")]
    for out, entry in zip(alone, ids):
        if entry != "__base__":
            assert (out[-base.shape[0]:] - base).abs().max() > 1e-2, entry


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_prefix_rows_equal_each_row_alone(family: str) -> None:
    """Prefixes of different lengths, a reparameterised one, base and LoRA rows, and Stacks of a
    prefix with host adapters: one forward, each row as alone; k consecutive rows per example."""
    model, kit = _kit(family)
    ids = ["pa", "pb", "__base__", "lo", "pr", ak.Stack("pb", "lo"), ak.Stack("bn", "pa", "lo")]
    batch = _batch(family, len(ids))
    want = torch.stack(_alone(model, kit, family, batch, ids))
    _assert_effect(list(want), ids)
    with torch.no_grad(), kit.route(ids):
        got = run(model, family, batch)
        double = run(model, family, {k: v.repeat_interleave(2, 0) for k, v in batch.items()})
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(double, want.repeat_interleave(2, 0), **TOL)
    assert kit.composition is None and not kit._exec.state.plan.inputs


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_prompt_rows_equal_each_row_alone(family: str) -> None:
    """Prompts of 3 and 5 tokens with base, LoRA and prefix rows. Decoders: every row has 5 slots
    in front (a 3-token prompt fills the last 3), so tokens sit at 5.. in every row; bert: the
    pooled classifier output of each row equals its own, since position 0 is the row's first
    prompt token or its [CLS]."""
    model, kit = _kit(family)
    ids = ["qa", "__base__", "qb", "lo", "pa", ak.Stack("qa", "lo"), "qb"]
    batch = _batch(family, len(ids))
    alone = _alone(model, kit, family, batch, ids)
    _assert_effect(alone, ids)
    with torch.no_grad(), kit.route(ids):
        got = run(model, family, batch)
    if MODELS[family].decoder:
        assert got.shape[1] == 5 + S
        for i, want in enumerate(alone):  # row i's own positions are its last ones
            torch.testing.assert_close(got[i, -want.shape[0]:], want, **TOL)
    else:
        torch.testing.assert_close(got, torch.stack(alone), **TOL)


def test_encoder_prompt_layout() -> None:
    """bert's last hidden states: row i holds its p prompt positions, then its tokens, then
    ``5 - p`` masked slots, each position equal to the row alone."""
    family = "bert"
    model, kit = _kit(family)
    ids = ["qa", "__base__", "qb", "pa", "lo"]
    batch = _batch(family, len(ids))
    alone = _alone(model, kit, family, batch, ids, hidden=True)
    with torch.no_grad(), kit.route(ids):
        got = _out(model, family, batch, hidden=True)
    assert got.shape[1] == 5 + S
    for i, (entry, want) in enumerate(zip(ids, alone)):
        assert want.shape[0] == _prompt_tokens(kit, entry) + S
        torch.testing.assert_close(got[i, :want.shape[0]], want, **TOL)


def test_one_adapter_for_every_row_runs_as_activate() -> None:
    family = "llama"
    model, kit = _kit(family)
    batch = _batch(family, 3)
    kit.activate("qa")
    (module,) = kit.record("qa").modules.values()
    with torch.no_grad():
        want = run(model, family, batch)
        with kit.route(["qa", ak.Stack("qa"), "qa"]):
            assert kit._exec.state.plan.inputs == (module,)
            got = run(model, family, batch)
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("padded", [False, True])
def test_generate_routed_rows_equal_each_row_alone(family: str, padded: bool) -> None:
    """Greedy generate() over a routed batch of prefix, prompt, base and Stack rows (left padded
    or not) equals generating each row alone: same tokens, logits within 1e-5."""
    model, kit = _kit(family)
    model.generation_config.eos_token_id = None
    ids = ["pa", "qa", "__base__", "pb", "qb", ak.Stack("qa", "lo"), "pr"]
    prompt = _batch(family, len(ids))["input_ids"]
    mask = torch.ones_like(prompt)
    if padded:
        mask[0, :2] = 0
        mask[2, :1] = 0
        mask[4, :3] = 0
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "output_logits": True,
          "return_dict_in_generate": True}
    seqs, logits = [], []
    for i, entry in enumerate(ids):
        kit.activate(None if entry == "__base__" else entry)
        res = model.generate(prompt[i:i + 1], attention_mask=mask[i:i + 1], **kw)
        seqs.append(res.sequences)
        logits.append(torch.stack(res.logits, 1))
    kit.activate(None)
    with kit.route(ids):
        res = model.generate(prompt, attention_mask=mask, **kw)
    assert torch.equal(res.sequences, torch.cat(seqs))
    torch.testing.assert_close(torch.stack(res.logits, 1), torch.cat(logits), **TOL)
    assert len({tuple(s[0, S:].tolist()) for s in seqs}) > 1  # the rows do generate differently
    with kit.route(ids):  # without the cache, every step starts afresh
        assert torch.equal(model.generate(prompt, attention_mask=mask, use_cache=False,
                                          **kw).sequences, res.sequences)
    if padded:  # beam search: two rows per example, reordered in the cache at every step
        beams = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 3, "do_sample": False,
                 "pad_token_id": 0}
        want = []
        for i, entry in enumerate(ids):
            kit.activate(None if entry == "__base__" else entry)
            want.append(model.generate(prompt[i:i + 1], attention_mask=mask[i:i + 1], **beams))
        kit.activate(None)
        with kit.route(ids):
            assert torch.equal(model.generate(prompt, attention_mask=mask, **beams), torch.cat(want))


def test_decoding_step_without_position_ids() -> None:
    """A hand-written decoding step (a cache, no mask, no position_ids): positions come from the
    tokens cached before, per row."""
    family = "llama"
    model, kit = _kit(family)
    ids = ["pa", "qb", "__base__", "pr"]
    first = _batch(family, len(ids))["input_ids"]
    step = torch.randint(5, V, (len(ids), 1), generator=torch.Generator().manual_seed(4))

    def two_steps() -> torch.Tensor:
        with torch.no_grad():
            out = model(input_ids=first, use_cache=True)
            return model(input_ids=step, past_key_values=out.past_key_values).logits[:, -1]

    want = []
    for i, entry in enumerate(ids):
        kit.activate(None if entry == "__base__" else entry)
        with torch.no_grad():
            out = model(input_ids=first[i:i + 1], use_cache=True)
            want.append(model(input_ids=step[i:i + 1],
                              past_key_values=out.past_key_values).logits[:, -1])
    kit.activate(None)
    with kit.route(ids):
        got = two_steps()
    torch.testing.assert_close(got, torch.cat(want), **TOL)


def test_routed_gradients_equal_each_row_alone() -> None:
    """Training under a route: each prompt and prefix gets the gradients of its rows alone."""
    family = "llama"
    ids = ["pa", "qa", "__base__", "qb", "pa", "pr"]
    names = ("pa", "qa", "qb", "pr")

    def loss(out: torch.Tensor) -> torch.Tensor:
        return out[..., -S:, :].pow(2).mean(-1).sum()  # the tokens' logits

    model, kit = _kit(family)
    batch = _batch(family, len(ids))
    for i, entry in enumerate(ids):
        kit.activate(None if entry == "__base__" else entry)
        loss(run(model, family, {k: v[i:i + 1] for k, v in batch.items()})).backward()
    want = {n: [p.grad.clone() for p in kit.parameters(n)] for n in names}
    kit.activate(None)
    for n in names:
        for p in kit.parameters(n):
            p.grad = None
    with kit.route(ids):
        loss(run(model, family, batch)).backward()
    for n in names:
        for p, g in zip(kit.parameters(n), want[n]):
            assert g.abs().sum() > 0
            torch.testing.assert_close(p.grad, g, **TOL)


def test_refusals() -> None:
    _, kit = _kit("llama")
    with pytest.raises(ak.CompositionError, match="direct member of a Stack entry"):
        kit.activate(ak.Route([ak.Average("qa", "lo"), "__base__"]))
    with pytest.raises(ak.CompositionError, match="direct member of a Stack entry"):
        kit.activate(ak.Route([ak.Stack("lo", ak.Average("pa")), "__base__"]))
    with pytest.raises(ak.CompositionError, match="several prompt/prefix adapters"):
        kit.activate(ak.Route([ak.Stack("qa", "pa"), "__base__"]))
    roberta = ak.AdapterKit(build("roberta"))
    roberta.add("q", ak.PromptTuning(num_tokens=2))
    with pytest.raises(ak.CompositionError, match=r"supports the families \['bert', 'gpt2'"):
        roberta.activate(ak.Route(["q", "__base__"]))
    roberta.activate(ak.Route(["q", "q"]))  # one adapter for every row: as activate("q")
    assert kit.composition is None
