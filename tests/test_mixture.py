"""Mixture: values against hand-computed references, the batched LoRA kernel against the loop,
router training, save/load, the balance losses, generate() on decoders, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.compose import mixture as mixture_mod
from adapterkit.core.mixing import balance_loss

from .helpers import kit_snapshot, perturb
from .models import build, inputs_for, run

EXPERTS = ("a", "b", "c")


def _kit(family: str = "bert", experts: tuple[str, ...] = EXPERTS, config=None):
    model = build(family)
    kit = ak.AdapterKit(model)
    for i, name in enumerate(experts):
        kit.add(name, config or ak.LoRA(r=2 + i, alpha=4 + i))  # ranks differ
        perturb(kit, name, std=0.3, seed=10 + i)
    return model, kit


def _randomise_router(kit: ak.AdapterKit, name: str, std: float = 1.0) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in kit.parameters(name):
            p.copy_(torch.randn(p.shape, generator=g) * std)


class Capture:
    """Forward hooks recording each LoRA host's input and final output."""

    def __init__(self, model, hosts) -> None:
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [model.get_submodule(h).register_forward_hook(self._hook(h)) for h in hosts]

    def _hook(self, host):
        def hook(module, args, output):
            self.seen[host] = (args[0].detach(), output.detach())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _lora_delta(kit, name, host, x):
    m = kit.record(name).modules[host]
    return m.scale * F.linear(F.linear(x, m.lora_A), m.lora_B)


def _reference(kit, model, host, x, weights):
    """``W x + b + sum_i w_i delta_i(x)`` written out here."""
    base = model.get_submodule(host)
    out = F.linear(x, base.weight, base.bias)
    for i, name in enumerate(EXPERTS):
        out = out + weights[..., i:i + 1] * _lora_delta(kit, name, host, x)
    return out


def test_one_expert_is_that_expert_bit_for_bit() -> None:
    model, kit = _kit(experts=("a",))
    x = inputs_for("bert")
    kit.activate("a")
    want = run(model, "bert", x)
    kit.add_router(ak.Mixture("a"))
    _randomise_router(kit, "mix_a")
    kit.activate(ak.Mixture("a"))
    assert torch.equal(run(model, "bert", x), want)


@pytest.mark.parametrize("top_k", [None, 1])
def test_router_fixed_to_one_hot_is_that_expert(top_k: int | None) -> None:
    model, kit = _kit()
    x = inputs_for("bert")
    kit.activate("b")
    want = run(model, "bert", x)
    mix = ak.Mixture(*EXPERTS, top_k=top_k)
    kit.add_router(mix)
    with torch.no_grad():
        for mod in kit.record(mix.name).modules.values():
            mod.gate.weight.zero_()
            mod.gate.bias.copy_(torch.tensor([-1000.0, 1000.0, -1000.0]))
    kit.activate(mix)
    torch.testing.assert_close(run(model, "bert", x), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("top_k", [None, 2])
def test_token_mixture_equals_the_hand_computed_sum_at_every_token(top_k: int | None) -> None:
    model, kit = _kit()
    mix = ak.Mixture(*EXPERTS, top_k=top_k)
    kit.add_router(mix)
    _randomise_router(kit, mix.name, std=0.5)
    kit.activate(mix)
    hosts = list(kit.record(mix.name).modules)
    cap = Capture(model, hosts)
    run(model, "bert", inputs_for("bert"))
    cap.close()
    for host in hosts:
        x, got = cap.seen[host]
        gate = kit.record(mix.name).modules[host].gate
        logits = x @ gate.weight.t() + gate.bias  # (N, T, 3)
        if top_k is None:
            w = torch.softmax(logits, -1)
        else:  # the top-k logits' softmax, renormalised over the chosen experts
            w = torch.zeros_like(logits)
            vals, idx = logits.topk(top_k, -1)
            w.scatter_(-1, idx, torch.exp(vals) / torch.exp(vals).sum(-1, keepdim=True))
            assert torch.allclose(w.sum(-1), torch.ones_like(w[..., 0]))
            assert bool(((w > 0).sum(-1) == top_k).all())
        torch.testing.assert_close(got, _reference(kit, model, host, x, w), atol=1e-5, rtol=0)


def test_sequence_mixture_pools_the_masked_mean_per_example() -> None:
    model, kit = _kit()
    mix = ak.Mixture(*EXPERTS, router="sequence")
    kit.add_router(mix)
    _randomise_router(kit, mix.name, std=0.5)
    kit.activate(mix)
    x = inputs_for("bert")  # row 1 has two padded positions
    hosts = list(kit.record(mix.name).modules)
    cap = Capture(model, hosts)
    run(model, "bert", x)
    cap.close()
    m = x["attention_mask"].float()[..., None]
    for host in hosts:
        hx, got = cap.seen[host]
        mean = (hx * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        gate = kit.record(mix.name).modules[host].gate
        w = torch.softmax(mean @ gate.weight.t() + gate.bias, -1)  # (N, 1, 3)
        torch.testing.assert_close(got, _reference(kit, model, host, hx, w), atol=1e-5, rtol=0)
    # padding changes nothing for the unpadded positions of a row: row 1 alone, unpadded
    full = run(model, "bert", x)
    alone = {"input_ids": x["input_ids"][1:, :5], "attention_mask": x["attention_mask"][1:, :5]}
    torch.testing.assert_close(run(model, "bert", alone), full[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("router", ["token", "sequence"])
def test_batched_kernel_equals_the_loop(router: str, monkeypatch) -> None:
    model, kit = _kit()
    mix = ak.Mixture(*EXPERTS, router=router, top_k=2)
    params = kit.train_router(mix, experts=True)
    _randomise_router(kit, mix.name, std=0.5)
    x = inputs_for("bert")
    calls = []
    real = mixture_mod.lora_mix
    monkeypatch.setattr(mixture_mod, "lora_mix", lambda *a, **k: calls.append(1) or real(*a, **k))

    def forward_backward():
        for p in params:
            p.grad = None
        out = run(model, "bert", x)
        out.pow(2).sum().backward()
        return out.detach(), [p.grad.clone() for p in params]

    batched, grads = forward_backward()
    assert calls, "the batched kernel did not run"
    monkeypatch.setattr(mixture_mod, "_batched", lambda *a: False)
    calls.clear()
    looped, loop_grads = forward_backward()
    assert not calls
    torch.testing.assert_close(batched, looped, atol=1e-6, rtol=0)
    for g, h in zip(grads, loop_grads):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-5)


def test_mixture_over_bottlenecks_runs_the_general_path() -> None:
    model, kit = _kit(experts=("a", "b"), config=ak.Bottleneck(reduction=4))
    mix = ak.Mixture("a", "b")
    kit.add_router(mix)
    _randomise_router(kit, mix.name)
    kit.activate(mix)
    hosts = list(kit.record(mix.name).modules)
    cap = Capture(model, hosts)
    run(model, "bert", inputs_for("bert"))
    cap.close()
    for host in hosts:
        x, got = cap.seen[host]
        base = model.get_submodule(host)
        h = F.linear(x, base.weight, base.bias)
        gate = kit.record(mix.name).modules[host].gate
        w = torch.softmax(x @ gate.weight.t() + gate.bias, -1)
        want = h
        for i, name in enumerate(("a", "b")):
            bn = kit.record(name).modules[host]
            want = want + w[..., i:i + 1] * bn.up(torch.relu(bn.down(h)))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_train_router_moves_only_the_router_and_heads() -> None:
    model, kit = _kit()
    mix = ak.Mixture(*EXPERTS, top_k=2, balance="switch")
    params = kit.train_router(mix, train_also=("classifier",))
    trainable = {id(p) for p in params}
    assert trainable == {id(p) for p in kit.parameters(mix.name)} | {
        id(p) for p in model.classifier.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    x = inputs_for("bert")
    for _ in range(3):
        loss = run(model, "bert", x).pow(2).mean() + 0.01 * kit.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    router = {n for n, p in model.named_parameters() if id(p) in trainable}
    assert moved == router and any(f".{mix.name}." in n for n in moved)
    # joint training moves the experts too
    params = kit.train_router(mix, experts=True)
    assert {id(p) for p in kit.parameters("a")} <= {id(p) for p in params}


def test_train_router_that_fails_leaves_the_model_as_it_was() -> None:
    model, kit = _kit()
    snap = kit_snapshot(model, kit)
    with pytest.raises(ak.AdapterError):
        kit.train_router(ak.Mixture(*EXPERTS), train_also=("no_such_head",))
    assert kit_snapshot(model, kit) == snap


def test_router_save_load_bit_exact(tmp_path) -> None:
    model, kit = _kit()
    mix = ak.Mixture(*EXPERTS, router="sequence", top_k=2, name="router")
    kit.train_router(mix)
    _randomise_router(kit, "router")
    model.eval()
    x = inputs_for("bert")
    want = run(model, "bert", x)
    kit.save_setup(tmp_path / "setup")
    for name in EXPERTS:
        kit.save(name, tmp_path / name)
    kit.save("router", tmp_path / "router")
    fresh = build("bert")
    kit2 = ak.AdapterKit(fresh)
    with pytest.raises(ak.AdapterError, match="add or load the experts first"):
        kit2.load(tmp_path / "router")
    for name in EXPERTS:
        kit2.load(tmp_path / name)
    assert kit2.load(tmp_path / "router") == "router"
    kit2.activate(mix)
    assert torch.equal(run(fresh, "bert", x), want)
    fresh2 = build("bert")
    assert ak.AdapterKit(fresh2).load_setup(tmp_path / "setup") == mix
    assert torch.equal(run(fresh2, "bert", x), want)


def test_balance_losses_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    # switch, top-1: selections (0, 0, 1, 2) -> f = (1/2, 1/4, 1/4); P = mean of probs
    p_mean = probs.mean(0)
    want = 3 * (0.5 * p_mean[0] + 0.25 * p_mean[1] + 0.25 * p_mean[2])
    torch.testing.assert_close(balance_loss("switch", probs, None), want)
    # top-2 selections: (0,1), (0,1), (1, 0 or 2: tie broken by topk), (2, 0 or 1)
    two = balance_loss("switch", probs, 2)
    assert 0.5 < float(two) < 1.5
    uniform = torch.full((5, 4), 0.25)
    assert float(balance_loss("specialization", uniform, None)) == pytest.approx(1.0)
    one_hot = torch.eye(4)
    assert float(balance_loss("specialization", one_hot, None)) == pytest.approx(0.0, abs=1e-6)
    skewed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(balance_loss("specialization", skewed, None)) == pytest.approx(1.0, abs=1e-6)
    assert float(balance_loss("specialization", torch.ones(3, 1), None)) == 0.0


def test_aux_loss_reads_the_last_forward() -> None:
    model, kit = _kit()
    assert float(kit.aux_loss()) == 0.0
    mix = ak.Mixture(*EXPERTS, balance="specialization")
    params = kit.train_router(mix)
    run(model, "bert", inputs_for("bert"))
    aux = kit.aux_loss()
    per_site = [m.last_aux for m in kit.record(mix.name).modules.values()]
    torch.testing.assert_close(aux, torch.stack(per_site).mean())
    aux.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    kit.activate(ak.Mixture(*EXPERTS))  # balance=None: no loss
    run(model, "bert", inputs_for("bert"))
    assert float(kit.aux_loss()) == 0.0


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3"])
@pytest.mark.parametrize("router", ["token", "sequence"])
def test_generate_matches_greedy_without_cache(family: str, router: str) -> None:
    model, kit = _kit(family)
    mix = ak.Mixture(*EXPERTS, router=router, top_k=2)
    kit.add_router(mix)
    _randomise_router(kit, mix.name, std=0.5)
    kit.activate(mix)
    model.generation_config.eos_token_id = None
    ids = inputs_for(family)["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)

    def logits() -> torch.Tensor:
        res = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
        return torch.stack(res.logits)

    mixed = logits()
    kit.activate(None)
    assert not torch.allclose(logits(), mixed), "the mixture had no effect on generation"


def test_mixture_inside_route_and_stack() -> None:
    model, kit = _kit()
    mix = ak.Mixture("a", "b")
    kit.add_router(mix)
    _randomise_router(kit, mix.name)
    x = inputs_for("bert")
    kit.activate(mix)
    alone = run(model, "bert", x)
    kit.activate("c")
    c_alone = run(model, "bert", x)
    with kit.route([mix, "c"]):
        routed = run(model, "bert", x)
    torch.testing.assert_close(routed[0], alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(routed[1], c_alone[1], atol=1e-6, rtol=0)
    kit.activate(ak.Stack(mix))
    assert torch.equal(run(model, "bert", x), alone)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: ak.Mixture("a", "a"), "names an expert twice"),
    (lambda: ak.Mixture("a", "b", top_k=3), r"top_k must be None or an integer in 1\.\.2"),
    (lambda: ak.Mixture("a", router="tokens"), "router must be 'token' or 'sequence'"),
    (lambda: ak.Mixture("a", balance="aux"), "balance must be None"),
    (lambda: ak.Mixture(ak.Stack("a")), "Mixture cannot hold Stack"),
])
def test_bad_blocks(make, match: str) -> None:
    with pytest.raises(ak.CompositionError, match=match):
        make()


def test_bad_compositions_are_refused_at_activate() -> None:
    model, kit = _kit()
    with pytest.raises(ak.CompositionError, match="no router named 'mix_a_b'"):
        kit.activate(ak.Mixture("a", "b"))
    kit.add_router(ak.Mixture("a", "b", top_k=1))
    with pytest.raises(ak.CompositionError, match="was built for experts"):
        kit.activate(ak.Mixture("a", "b"))
    with pytest.raises(ak.CompositionError, match="is a Mixture router"):
        kit.activate("mix_a_b")
    kit.add_router(ak.Mixture("a", "b", router="sequence", name="seq"))
    with pytest.raises(ak.CompositionError, match="not under Route"):
        kit.activate(ak.Route([ak.Mixture("a", "b", router="sequence", name="seq"), "a"]))
    with pytest.raises(ak.ConfigError, match=r"adapters \['zz'\] are not in the model"):
        kit.add_router(ak.Mixture("a", "zz"))
    with pytest.raises(ak.CompositionError, match="cannot remove 'a'"):
        kit.activate(ak.Mixture("a", "b", top_k=1))
        kit.remove("a")
    assert math.isfinite(float(run(model, "bert", inputs_for("bert")).sum()))


def test_router_over_experts_loaded_from_peft_checkpoints(tmp_path) -> None:
    model, kit = _kit(experts=("a", "b"))
    for name in ("a", "b"):
        kit.save(name, tmp_path / name, format="peft")
    fresh = build("bert")
    kit2 = ak.AdapterKit(fresh)
    for name in ("a", "b"):
        assert kit2.load(tmp_path / name, name=name) == name
    mix = ak.Mixture("a", "b", top_k=1)
    params = kit2.train_router(mix)
    assert {id(p) for p in params} == {id(p) for p in kit2.parameters(mix.name)}
    kit.add_router(mix)
    with torch.no_grad():
        for host, mod in kit.record(mix.name).modules.items():
            mod.gate.load_state_dict(kit2.record(mix.name).modules[host].gate.state_dict())
    kit.activate(mix)
    fresh.eval()
    x = inputs_for("bert")
    torch.testing.assert_close(run(fresh, "bert", x), run(model, "bert", x), atol=1e-6, rtol=0)


def test_a_router_is_no_union_member() -> None:
    with pytest.raises(ak.ConfigError, match="mixture layer runs only inside its composition"):
        ak.MethodUnion((ak.LoRA(), ak.MixtureRouter(experts=("a", "b"))))
