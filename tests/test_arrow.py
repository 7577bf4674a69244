"""Arrow: prototypes against a dense SVD, routing weights against the paper's definition written
here, the prototype cache and stored prototypes, save/load of the block, generate()."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.compose import arrow as arrow_mod
from adapterkit.core.spectral import power_iteration, top_right_singular

from .helpers import kit_snapshot, perturb
from .models import build, inputs_for, run

EXPERTS = ("a", "b", "c", "d")


def _kit(family: str = "bert"):
    model = build(family)
    kit = ak.AdapterKit(model)
    for i, name in enumerate(EXPERTS):
        kit.add(name, ak.LoRA(r=2 + i % 2, alpha=4))
        perturb(kit, name, std=0.3, seed=20 + i)
    return model, kit


def _dense_v(kit, name: str, host: str) -> torch.Tensor:
    """The top right singular vector of ``s B A`` from ``torch.linalg.svd``, in float64."""
    m = kit.record(name).modules[host]
    dw = (m.scale * m.lora_B.double() @ m.lora_A.double())
    return torch.linalg.svd(dw)[2][0]


def test_prototypes_equal_a_dense_svd() -> None:
    _model, kit = _kit()
    for name in EXPERTS:
        protos = ak.Arrow.prototypes(kit, name)
        assert set(protos) == set(kit.record(name).modules)
        for host, v in protos.items():
            ref = _dense_v(kit, name, host)
            ref = ref * torch.sign(ref @ v)  # singular vectors have no sign
            torch.testing.assert_close(v, ref, atol=1e-4, rtol=0)


def test_power_iteration_and_dense_input() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 30, generator=g, dtype=torch.float64)
    sigma, v = top_right_singular(m)
    _u, s, vh = torch.linalg.svd(m)
    assert sigma == pytest.approx(float(s[0]), rel=1e-10)
    torch.testing.assert_close(v, vh[0] * torch.sign(vh[0] @ v), atol=1e-8, rtol=0)
    tall = torch.randn(40, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(top_right_singular(tall)[1].abs(),
                               torch.linalg.svd(tall)[2][0].abs(), atol=1e-8, rtol=0)
    value, _vec, steps = power_iteration(torch.diag(torch.tensor([3.0, 1.0, 0.5])))
    assert float(value) == pytest.approx(3.0) and steps < 100
    assert float(power_iteration(torch.zeros(3, 3))[0]) == 0.0


def test_prototypes_are_cached_until_the_weights_change(monkeypatch) -> None:
    model, kit = _kit()
    calls = []
    real = arrow_mod.top_right_singular
    monkeypatch.setattr(arrow_mod, "top_right_singular",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    first = ak.Arrow.prototypes(kit, "a")
    n = len(calls)
    assert n == len(first)
    second = ak.Arrow.prototypes(kit, "a")
    assert len(calls) == n and all(second[h] is first[h] for h in first)
    kit.activate(ak.Arrow(*EXPERTS, top_k=2))
    run(model, "bert", inputs_for("bert"))
    run(model, "bert", inputs_for("bert"))
    assert len(calls) == n * len(EXPERTS)  # the other experts, once each
    with torch.no_grad():
        next(iter(kit.record("a").modules.values())).lora_A.mul_(2.0)
    ak.Arrow.prototypes(kit, "a")
    assert len(calls) == n * len(EXPERTS) + 1  # only the changed site again


@pytest.mark.parametrize(("top_k", "temperature"), [(2, 1.0), (None, 0.5), (1, 1.0)])
def test_routing_weights_follow_the_paper(top_k, temperature) -> None:
    model, kit = _kit()
    kit.activate(ak.Arrow(*EXPERTS, top_k=top_k, temperature=temperature))
    hosts = list(kit.record("a").modules)
    seen = {}
    handles = [model.get_submodule(h).register_forward_hook(
        lambda mod, args, out, h=h: seen.__setitem__(h, (args[0], out))) for h in hosts]
    run(model, "bert", inputs_for("bert"))
    for handle in handles:
        handle.remove()
    for host in hosts:
        x, got = seen[host]
        v = torch.stack([_dense_v(kit, n, host) for n in EXPERTS]).float()  # (E, in)
        scores = (x @ v.t()).abs()  # |<x, v_i>|, the sign of v does not matter
        k = top_k or len(EXPERTS)
        top, idx = scores.topk(k, -1)
        w = torch.zeros_like(scores).scatter(-1, idx, torch.softmax(top / temperature, -1))
        base = model.get_submodule(host)
        want = F.linear(x, base.weight, base.bias)
        for i, name in enumerate(EXPERTS):
            m = kit.record(name).modules[host]
            want = want + w[..., i:i + 1] * m.scale * F.linear(F.linear(x, m.lora_A), m.lora_B)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_stored_prototypes_are_used_and_bad_ones_refused(tmp_path) -> None:
    _model, kit = _kit()
    x = inputs_for("bert")
    for name in EXPERTS:
        kit.save(name, tmp_path / name)
        ak.Arrow.save_prototypes(kit, name, tmp_path / name)
    fresh = build("bert")
    kit2 = ak.AdapterKit(fresh)
    for name in EXPERTS:
        kit2.load(tmp_path / name)
    calls = []
    real = arrow_mod.top_right_singular
    arrow_mod.top_right_singular = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        protos = ak.Arrow.prototypes(kit2, "a")
    finally:
        arrow_mod.top_right_singular = real
    assert calls == []  # read from the files, not computed
    for host, v in protos.items():
        torch.testing.assert_close(v, ak.Arrow.prototypes(kit, "a")[host], atol=1e-6, rtol=0)
    # a stored prototype decides the routing: replacing one changes the output
    kit2.activate(ak.Arrow(*EXPERTS, top_k=1))
    before = run(fresh, "bert", x)
    host = next(iter(protos))
    ak.Arrow.store_prototypes(kit2, "a", {host: torch.ones_like(protos[host])})
    assert not torch.allclose(run(fresh, "bert", x), before)
    # a file of the wrong shape: the load fails and the model is as it was
    from safetensors.torch import save_file

    save_file({host: torch.ones(3)}, str(tmp_path / "a" / "arrow_prototypes.safetensors"))
    snap = kit_snapshot(fresh, kit2)
    with pytest.raises(ak.LoadError, match=r"arrow_prototypes.safetensors.*shape \(32,\)"):
        kit2.load(tmp_path / "a", name="a2")
    assert kit_snapshot(fresh, kit2) == snap


def test_arrow_round_trips_and_setup_is_bit_exact(tmp_path) -> None:
    model, kit = _kit()
    arrow = ak.Arrow(*EXPERTS, top_k=2, temperature=0.7)
    assert ak.compose.blocks.from_json(arrow.to_json()) == arrow
    kit.activate(arrow)
    x = inputs_for("bert")
    want = run(model, "bert", x)
    kit.save_setup(tmp_path / "s")
    fresh = build("bert")
    assert ak.AdapterKit(fresh).load_setup(tmp_path / "s") == arrow
    assert torch.equal(run(fresh, "bert", x), want)


def test_arrow_over_dora_uses_its_weight_delta() -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    for name in ("p", "q"):
        kit.add(name, ak.DoRA(r=2, alpha=4))
        perturb(kit, name, std=0.2, seed=ord(name))
    for host, v in ak.Arrow.prototypes(kit, "p").items():
        dw = kit.record("p").modules[host].delta_weight(model.get_submodule(host)).double()
        ref = torch.linalg.svd(dw)[2][0]
        torch.testing.assert_close(v, ref * torch.sign(ref @ v), atol=1e-4, rtol=0)
    kit.activate(ak.Arrow("p", "q"))
    assert torch.isfinite(run(model, "bert", inputs_for("bert"))).all()


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral"])
def test_generate_matches_greedy_without_cache(family: str) -> None:
    model, kit = _kit(family)
    kit.activate(ak.Arrow(*EXPERTS, top_k=2))
    model.generation_config.eos_token_id = None
    ids = inputs_for(family)["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_bad_arrows() -> None:
    with pytest.raises(ak.CompositionError, match="temperature must be a finite number > 0"):
        ak.Arrow("a", "b", temperature=0)
    with pytest.raises(ak.CompositionError, match=r"top_k must be None or an integer in 1\.\.2"):
        ak.Arrow("a", "b", top_k=0)
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=2))
    kit.add("bn", ak.Bottleneck(reduction=4))
    with pytest.raises(ak.CompositionError, match="'bn' is a bottleneck"):
        kit.activate(ak.Arrow("a", "bn"))
    with pytest.raises(ak.AdapterError, match="has no site there"):
        ak.Arrow.store_prototypes(kit, "a", {"nowhere": torch.ones(32)})
