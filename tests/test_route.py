"""Per-example routing: every row equals running that example alone with its adapter, for each
kernel (dense slots, gathered weights, the generic loop), method, model family and generate()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import adapterkit as ak
from adapterkit.core.kernels import choose
from adapterkit.methods import _REGISTRY, get_method

from .helpers import perturb
from .models import MODELS, V, build, run

FAMILIES = ("bert", "llama", "gpt2")
TOL = {"atol": 2e-5, "rtol": 1e-5}


def _batch(family: str, n: int = 5, length: int = 6, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (n, length), generator=g)
    if MODELS[family].decoder:
        return {"input_ids": ids}
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _alone(model, kit, family: str, batch: dict, ids: list) -> torch.Tensor:
    """Each example on its own (batch 1) with its own entry activated."""
    outs = []
    for i, entry in enumerate(ids):
        kit.activate(None if entry == "__base__" else entry)
        outs.append(run(model, family, {k: v[i:i + 1] for k, v in batch.items()}))
    kit.activate(None)
    return torch.cat(outs)


def _kit(family: str, configs: dict) -> tuple[torch.nn.Module, ak.AdapterKit]:
    model = build(family)
    kit = ak.AdapterKit(model)
    for i, (name, config) in enumerate(configs.items()):
        kit.add(name, config)
        perturb(kit, name, std=0.15, seed=i)
    return model, kit


LORAS = {"a": ak.LoRA(r=2, alpha=4), "b": ak.LoRA(r=4, alpha=4), "c": ak.LoRA(r=4, alpha=2)}
MIXED = {"lora": ak.LoRA(r=2), "ia3": ak.IA3(), "ia3ff": ak.IA3(targets=("attn.q", "ffn.in"),
                                                                 feedforward=("ffn.in",)),
         "houlsby": ak.Bottleneck(reduction=4, placement="both", layer_norm=True),
         "par": ak.Bottleneck(reduction=4, placement="both", mode="parallel", scaling=2.0),
         "bn2": ak.Bottleneck(reduction=4, placement="both")}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["dense", "gather", "loop", "auto"])
def test_lora_route_equals_each_example_alone(family: str, strategy: str) -> None:
    model, kit = _kit(family, LORAS)
    batch = _batch(family)
    ids = ["b", "__base__", "a", "c", "b"]
    want = _alone(model, kit, family, batch, ids)
    with kit.route(ids, strategy=strategy):
        got = run(model, family, batch)
    torch.testing.assert_close(got, want, **TOL)
    assert kit.composition is None  # the previous composition is back


KERNEL_CASES = {
    "lora-mixed-ranks": lambda i: ak.LoRA(r=2 + i, alpha=4, targets=("attn.q", "attn.v", "ffn.in")),
    "ia3-output": lambda i: ak.IA3(feedforward=()),
    "ia3-input": lambda i: ak.IA3(targets=("attn.q", "ffn.in"), feedforward=("attn.q", "ffn.in")),
    "houlsby-ln": lambda i: ak.Bottleneck(reduction=4, placement="both", layer_norm=True,
                                          scaling=1.0 + i),
    "parallel": lambda i: ak.Bottleneck(reduction=4, placement="both", mode="parallel"),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_batched_kernels_equal_each_example_alone(family: str, case: str, monkeypatch) -> None:
    """Three adapters of one method in one batch, with base rows: the batched kernel (never
    the loop) gives each row its own adapter's output."""
    import adapterkit.core.kernels as kernels

    def no_loop(*args, **kwargs):
        raise AssertionError("the generic loop ran instead of the batched kernel")

    model, kit = _kit(family, {f"k{i}": KERNEL_CASES[case](i) for i in range(3)})
    ids = ["k2", "__base__", "k0", "k1", "k0"]
    batch = _batch(family)
    want = _alone(model, kit, family, batch, ids)
    monkeypatch.setattr(kernels, "loop_route", no_loop)
    with kit.route(ids, strategy="gather" if case.startswith("lora") else None):
        got = run(model, family, batch)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_methods_route_equals_each_example_alone(family: str) -> None:
    model, kit = _kit(family, MIXED)
    names = list(MIXED)
    ids = [*names, "__base__", names[0]]
    batch = _batch(family, n=len(ids))
    want = _alone(model, kit, family, batch, ids)
    with kit.route(ids):
        got = run(model, family, batch)
    torch.testing.assert_close(got, want, **TOL)


def _generic(kind: str, i: int, family: str):
    """Two adapters of each method whose routing runs the generic loop (``delta`` on each
    adapter's rows), on the targets the method supports on ``family``."""
    from .basis import basis_for

    qv = ("attn.q", "attn.v")
    return {
        "dora": lambda: ak.DoRA(r=2 + i, alpha=4, targets=qv),
        "vera": lambda: ak.VeRA(r=4, targets=qv, projection_prng_key=i),
        "eigenlora": lambda: ak.EigenLoRA(basis=basis_for(family), k=4, r=2, alpha=4 + i),
        "compacter": lambda: ak.Compacter(reduction=4, placement="ffn" if i else "both",
                                          plus_plus=bool(i)),
        "adapterbias": lambda: ak.AdapterBias(placement="both" if i else "ffn"),
    }[kind]()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["dora", "vera", "eigenlora", "compacter", "adapterbias"])
def test_generic_route_equals_each_example_alone(family: str, kind: str) -> None:
    """Methods routed by the generic loop: two adapters of the method, a LoRA, a Stack of the
    method and the LoRA, and base rows in one batch, each row as alone."""
    model, kit = _kit(family, {"m0": _generic(kind, 0, family), "m1": _generic(kind, 1, family),
                               "l": ak.LoRA(r=2)})
    ids = ["m1", "__base__", "m0", "l", ak.Stack("m0", "l"), "m1"]
    batch = _batch(family, n=len(ids))
    want = _alone(model, kit, family, batch, ids)
    for i in (0, 2):  # the method's rows differ from the base row
        assert (want[i] - want[1]).abs().max() > 1e-3
    with kit.route(ids):
        got = run(model, family, batch)
    torch.testing.assert_close(got, want, **TOL)


def test_route_over_compositions_and_repeated_rows() -> None:
    family = "bert"
    model, kit = _kit(family, {**LORAS, "bn": ak.Bottleneck(reduction=4)})
    kit.add_fusion(ak.Fuse("a", "bn", name="f"))
    perturb(kit, "f", std=0.1, seed=5)
    ids = [ak.Stack("a", "bn"), "c", "__base__", ak.Fuse("a", "bn", name="f"),
           ak.Average("b", "c", weights=[0.3, 1.2])]
    batch = _batch(family, n=len(ids))
    want = _alone(model, kit, family, batch, ids)
    with kit.route(ids):
        got = run(model, family, batch)
    torch.testing.assert_close(got, want, **TOL)
    # k consecutive rows per example (as generate's repeat_interleave expansion gives)
    double = {k: v.repeat_interleave(2, 0) for k, v in batch.items()}
    with kit.route(ids):
        got2 = run(model, family, double)
    torch.testing.assert_close(got2, want.repeat_interleave(2, 0), **TOL)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_route_in_generate_equals_per_example_generate(family: str) -> None:
    model, kit = _kit(family, {"a": ak.LoRA(r=4), "bn": ak.Bottleneck(reduction=4),
                               "ia3": ak.IA3()})
    model.generation_config.eos_token_id = None
    ids = ["a", "bn", "__base__", "ia3"]
    prompt = _batch(family, n=len(ids))["input_ids"]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "output_logits": True,
          "return_dict_in_generate": True}
    seqs, logits = [], []
    for i, entry in enumerate(ids):
        kit.activate(None if entry == "__base__" else entry)
        res = model.generate(prompt[i:i + 1], **kw)
        seqs.append(res.sequences)
        logits.append(torch.stack(res.logits, 1))
    with kit.route(ids):
        res = model.generate(prompt, **kw)
    assert torch.equal(res.sequences, torch.cat(seqs))
    torch.testing.assert_close(torch.stack(res.logits, 1), torch.cat(logits), **TOL)


@pytest.mark.parametrize("strategy", ["dense", "gather"])
def test_cached_stacks_follow_parameter_changes(strategy: str) -> None:
    family = "bert"
    model, kit = _kit(family, LORAS)
    ids = ["a", "b", "c", "a", "__base__"]
    batch = _batch(family)
    with torch.no_grad(), kit.route(ids, strategy=strategy):
        run(model, family, batch)  # fills the caches
        perturb(kit, "b", std=0.3, seed=99)  # in place: bumps the version counters
        got = run(model, family, batch)
        with torch.inference_mode():
            got_inference = run(model, family, batch)
    torch.testing.assert_close(got, _alone(model, kit, family, batch, ids), **TOL)
    assert torch.equal(got, got_inference)
    with kit.route(ids, strategy=strategy):  # .to() replaces the storage
        model.double()
        got = run(model, family, batch)
        model.float()
    assert got.dtype == torch.float64
    kit.remove("c")  # a new adapter under an old name: the slots' caches start afresh
    kit.add("c", ak.LoRA(r=3, targets=("attn.q", "attn.k")))
    perturb(kit, "c", std=0.2, seed=8)
    with kit.route(ids, strategy=strategy):
        got = run(model, family, batch)
    torch.testing.assert_close(got, _alone(model, kit, family, batch, ids), **TOL)


def test_route_trains_each_row_with_its_adapter() -> None:
    """Gradients through the batched kernels (no cache in training) equal the generic loop's."""
    family = "llama"
    grads = {}
    for strategy in ("gather", "dense", "loop"):
        model, kit = _kit(family, LORAS)
        with kit.route(["a", "b", "__base__", "a"], strategy=strategy):
            run(model, family, _batch(family, n=4)).pow(2).mean().backward()
        grads[strategy] = [p.grad for n in ("a", "b") for p in kit.parameters(n)]
        assert all(g is not None and g.abs().sum() > 0 for g in grads[strategy])
        assert all(p.grad is None for p in kit.parameters("c"))  # no row runs c
    for g1, g2, g3 in zip(grads["gather"], grads["dense"], grads["loop"]):
        torch.testing.assert_close(g1, g3, **TOL)
        torch.testing.assert_close(g2, g3, **TOL)


def test_strategy_choice_and_route_errors(monkeypatch) -> None:
    assert choose(32, 64, 8) == "gather"  # encoder batch, many adapters
    assert choose(2, 64, 4) == "dense"
    assert choose(8, 1, 8) == "gather"  # one-token decoding
    # a method whose spec says routable=False (the registry entry swapped for this test only)
    monkeypatch.setitem(_REGISTRY, "dora", dataclasses.replace(get_method("dora"), routable=False))
    model, kit = _kit("bert", {"a": ak.LoRA(r=2), "d": ak.DoRA(r=2)})
    with pytest.raises(ak.CompositionError, match=r"\['dora'\] do not support per-example"):
        kit.activate(ak.Route(["a", "d"]))
    with pytest.raises(ak.CompositionError, match=r"\['dora'\] do not support per-example"):
        kit.activate(ak.Route([ak.Stack("a", "d"), "__base__"]))
    assert kit.composition is None
    with pytest.raises(ak.CompositionError, match="unknown route strategy"):
        kit.activate(ak.Route(["a", "__base__"]), strategy="fast")
    with pytest.raises(ak.AdapterNameError, match="no adapter named 'zz'"):
        kit.activate(ak.Route(["a", "zz"]))
    with kit.route(["a", "__base__", "a"]), pytest.raises(
            ak.CompositionError, match="covers 3 examples but a host sees a batch of 5"):
        run(model, "bert", _batch("bert"))
    kit.merge("a")
    with pytest.raises(ak.CompositionError, match="merged into the base weights"):
        kit.activate(ak.Route(["a", "__base__"]))
