"""Poly/MHR and HyperAdapter: one skill is a LoRA, per-example task ids, MHR-z and MHR-mu, new
tasks, materialised hyper-adapters, save/load with several tasks, generate(), bad task ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak

from .helpers import perturb
from .models import build, inputs_for, run


def _kit(config, family: str = "bert", std: float = 0.5):
    model = build(family)
    kit = ak.AdapterKit(model)
    kit.add("a", config)
    perturb(kit, "a", std=std)
    kit.activate("a")
    return model, kit


def _rows_alone(model, kit, family, x, ids):
    """Each example run alone with its own task id."""
    out = []
    for b, t in enumerate(ids):
        one = {k: v[b:b + 1] for k, v in x.items()}
        with kit.tasks([t]):
            out.append(run(model, family, one))
    return torch.cat(out)


@pytest.mark.parametrize("train", [False, True])
def test_poly_with_one_skill_equals_a_lora(train: bool) -> None:
    model, kit = _kit(ak.Poly(n_skills=1, n_tasks=3, n_splits=2, r=4, alpha=8))
    kit.add("lora", ak.LoRA(r=4, alpha=8))
    with torch.no_grad():
        for host, mod in kit.record("a").modules.items():
            lora = kit.record("lora").modules[host]
            lora.lora_A.copy_(mod.lora_A[:, 0].reshape(-1, 4).t())
            lora.lora_B.copy_(mod.lora_B[:, 0].transpose(0, 1).reshape(4, -1).t())
    model.train(train)
    x = inputs_for("bert")
    with kit.tasks([2, 0]):
        got = run(model, "bert", x)
    kit.activate("lora")
    torch.testing.assert_close(got, run(model, "bert", x), atol=1e-6, rtol=0)


def test_poly_delta_by_hand_and_rows_match_running_alone() -> None:
    model, kit = _kit(ak.Poly(n_skills=3, n_tasks=4, n_splits=2, r=2, alpha=2), std=1.0)
    model.eval()
    x = inputs_for("bert")
    host, mod = next(iter(kit.record("a").modules.items()))
    seen = {}
    hook = model.get_submodule(host).register_forward_hook(
        lambda m, a, o: seen.__setitem__("io", (a[0], o)))
    with kit.tasks([3, 1]):
        out = run(model, "bert", x)
    hook.remove()
    hx, got = seen["io"]
    base = model.get_submodule(host)
    for b, t in enumerate([3, 1]):
        z = torch.sigmoid(mod.routing[t]).view(2, 3)
        w = z / z.sum(-1, keepdim=True)  # (splits, skills)
        a = torch.cat([sum(w[q, s] * mod.lora_A[q, s] for s in range(3)) for q in range(2)], 0)
        bb = torch.cat([sum(w[q, s] * mod.lora_B[q, s] for s in range(3)) for q in range(2)], 1)
        want = F.linear(hx[b], base.weight, base.bias) + (hx[b] @ a @ bb) * (2 / 2)
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, _rows_alone(model, kit, "bert", x, [3, 1]), atol=1e-6, rtol=0)


def test_poly_samples_its_routing_in_training_only() -> None:
    model, kit = _kit(ak.Poly(n_skills=3, n_tasks=2, r=2))
    x = inputs_for("bert")
    with kit.tasks([0, 1]):
        model.eval()
        assert torch.equal(run(model, "bert", x), run(model, "bert", x))
        model.train()
        assert not torch.equal(run(model, "bert", x), run(model, "bert", x))


def test_mhr_z_trains_only_one_tasks_routing() -> None:
    model, kit = _kit(ak.Poly(n_skills=2, n_tasks=2, n_splits=2, r=2, sample=False))
    new = ak.Poly.add_tasks(kit, "a", 1)
    assert new == [2] and kit.config("a").n_tasks == 3
    params = ak.Poly.train_routing(kit, "a", tasks=new, train_also=("classifier",))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    model.train()
    for _ in range(3):
        with kit.tasks([2, 2]):
            loss = run(model, "bert", inputs_for("bert")).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.endswith("routing.2") or n.startswith("classifier") for n in moved)
    assert any(n.endswith("routing.2") for n in moved)


def test_mhr_mu_averages_the_skills_into_one_lora() -> None:
    model, kit = _kit(ak.Poly(n_skills=3, n_tasks=2, n_splits=2, r=2, alpha=3))
    ak.Poly.average(kit, "a", "mu")
    assert kit.record("mu").spec.name == "lora" and kit.record("mu").spec.mergeable
    x = inputs_for("bert")
    kit.activate("mu")
    got = run(model, "bert", x)
    # a Poly with one skill holding the averages is the same adapter
    kit.add("one", ak.Poly(n_skills=1, n_splits=2, r=2, alpha=3))
    with torch.no_grad():
        for host, mod in kit.record("a").modules.items():
            one = kit.record("one").modules[host]
            one.lora_A.copy_(mod.lora_A.mean(1, keepdim=True))
            one.lora_B.copy_(mod.lora_B.mean(1, keepdim=True))
    kit.activate("one")
    torch.testing.assert_close(got, run(model, "bert", x), atol=1e-6, rtol=0)
    kit.activate("mu")
    kit.merge("mu")
    torch.testing.assert_close(run(model, "bert", x), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("adapter", ["lora", "bottleneck"])
def test_materialised_hyper_adapter_equals_the_generated_one(adapter: str) -> None:
    cfg = ak.HyperAdapter(n_tasks=3, task_dim=8, hidden=16, adapter=adapter, r=4, reduction=4)
    model, kit = _kit(cfg, std=0.3)
    x = inputs_for("bert")
    for task in range(3):
        kit.activate("a")
        with kit.tasks([task, task]):
            want = run(model, "bert", x)
        ak.HyperAdapter.materialize(kit, "a", task, f"t{task}")
        kit.activate(f"t{task}")
        torch.testing.assert_close(run(model, "bert", x), want, atol=1e-6, rtol=0)
    kit.activate("a")
    with kit.tasks([2, 0]):
        mixed = run(model, "bert", x)
    torch.testing.assert_close(mixed, _rows_alone(model, kit, "bert", x, [2, 0]), atol=1e-6,
                               rtol=0)
    assert not torch.allclose(mixed[0], _rows_alone(model, kit, "bert", x, [0, 0])[0])


def test_hyper_shares_one_hypernetwork() -> None:
    _model, kit = _kit(ak.HyperAdapter(n_tasks=2, task_dim=8, hidden=16, r=2))
    mods = list(kit.record("a").modules.values())
    assert all(m.net is mods[0].net for m in mods)
    names = [n for n, _ in kit.record("a").modules[next(iter(kit.record("a").modules))]
             .named_parameters()]
    assert any("task_embeddings" in n for n in names)
    for m in mods[1:]:
        assert [n for n, _ in m.named_parameters()] == ["layer_embedding"]


def test_a_new_hyper_task_learns_only_its_embedding() -> None:
    model, kit = _kit(ak.HyperAdapter(n_tasks=2, task_dim=8, hidden=16, r=2), std=0.3)
    (task,) = ak.HyperAdapter.add_tasks(kit, "a")
    params = ak.HyperAdapter.train_task(kit, "a", task)
    assert len(params) == 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(3):
        with kit.tasks([task, task]):
            loss = run(model, "bert", inputs_for("bert")).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n in before if n.endswith(f"task_embeddings.{task}")}


@pytest.mark.parametrize("config", [
    ak.Poly(n_skills=3, n_tasks=3, n_splits=2, r=2),
    ak.HyperAdapter(n_tasks=3, task_dim=8, hidden=16, r=2),
    ak.HyperAdapter(n_tasks=3, task_dim=8, hidden=16, adapter="bottleneck", reduction=4,
                    placement="both"),
], ids=["poly", "hyper-lora", "hyper-bottleneck"])
def test_save_load_bit_exact_with_tasks(config, tmp_path) -> None:
    model, kit = _kit(config, std=0.3)
    adder = ak.Poly.add_tasks if isinstance(config, ak.Poly) else ak.HyperAdapter.add_tasks
    adder(kit, "a", 1)
    perturb(kit, "a", std=0.3, seed=5)
    model.eval()
    x = inputs_for("bert")
    with kit.tasks([3, 1]):
        want = run(model, "bert", x)
    kit.save("a", tmp_path / "a")
    fresh = build("bert")
    kit2 = ak.AdapterKit(fresh)
    kit2.load(tmp_path / "a")
    assert kit2.config("a").n_tasks == 4
    kit2.activate("a")
    with kit2.tasks([3, 1]):
        assert torch.equal(run(fresh, "bert", x), want)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("config", [
    ak.Poly(n_skills=2, n_tasks=2, n_splits=2, r=2),
    ak.HyperAdapter(n_tasks=2, task_dim=8, hidden=16, r=2),
], ids=["poly", "hyper"])
def test_generate_with_task_ids(family: str, config) -> None:
    model, kit = _kit(config, family, std=0.5)
    model.generation_config.eos_token_id = None
    ids = inputs_for(family)["input_ids"]
    with kit.tasks([1, 0]):
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        beams = model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False,
                               pad_token_id=0)  # the batch expands to 2 rows per example
        seq = ids
        with torch.no_grad():
            for _ in range(4):
                nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)
    for b, t in enumerate([1, 0]):
        with kit.tasks([t]):
            alone = model.generate(ids[b:b + 1], max_new_tokens=3, num_beams=2,
                                   do_sample=False, pad_token_id=0)
        assert torch.equal(beams[b:b + 1], alone)


def test_task_ids_are_checked() -> None:
    model, kit = _kit(ak.Poly(n_skills=2, n_tasks=2, r=2))
    x = inputs_for("bert")
    with pytest.raises(ak.AdapterError, match=r"needs each example's task id.*kit.tasks"):
        run(model, "bert", x)
    with pytest.raises(ak.AdapterError, match="out of range"), kit.tasks([0, 2]):
        pass
    with pytest.raises(ak.AdapterError, match="must be integers"), kit.tasks([0, 1.0]):
        pass
    with pytest.raises(ak.AdapterError, match=">= 0"), kit.tasks([0, -1]):
        pass
    with pytest.raises(ak.AdapterError, match="not a multiple"), kit.tasks([0, 1, 1]):
        run(model, "bert", x)
    with pytest.raises(ak.ConfigError, match="n_splits=5"):
        kit.add("b", ak.Poly(n_splits=5))
    with pytest.raises(ak.NotMergeableError, match=r"Poly\.average"):
        kit.merge("a")
    with pytest.raises(ak.ConfigError, match=r"tasks must be ids in 0\.\.1"):
        ak.Poly.train_routing(kit, "a", tasks=[7])
    plain = build("bert")
    with pytest.raises(ak.AdapterError, match="none is in the model"), ak.AdapterKit(plain).tasks([0]):
        pass
