"""principal_subspace and EigenLoRA beyond the shared invariants (tests/cases.py has its rows)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak

from .helpers import perturb
from .models import build, inputs_for, run


def _sources(tmp_path, n: int = 3, r: int = 2, family: str = "bert",
             targets: tuple[str, ...] = ("attn.q", "attn.v")) -> tuple[ak.AdapterKit, list]:
    kit = ak.AdapterKit(build(family))
    dirs = []
    for i in range(n):
        kit.add(f"s{i}", ak.LoRA(r=r, targets=targets))
        perturb(kit, f"s{i}", seed=i)
        kit.save(f"s{i}", tmp_path / f"s{i}")
        dirs.append(tmp_path / f"s{i}")
    return kit, dirs


def test_basis_is_orthonormal_and_spans_the_sources(tmp_path) -> None:
    kit, dirs = _sources(tmp_path)
    report = ak.principal_subspace(dirs, 6, tmp_path / "basis.safetensors", center=False)
    basis = load_file(str(tmp_path / "basis.safetensors"))
    assert all(v == pytest.approx(1.0) for v in report.explained_A.values())
    for host, module in kit.record("s0").modules.items():
        va, vb = basis[f"{host}.A"], basis[f"{host}.B"]  # (in, 6), (out, 6)
        torch.testing.assert_close(va.T @ va, torch.eye(6), atol=1e-5, rtol=0)
        a, b = module.lora_A.detach(), module.lora_B.detach()
        # every source factor lies in the span: projecting changes nothing
        torch.testing.assert_close(a @ va @ va.T, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(vb @ vb.T @ b, b, atol=1e-5, rtol=0)


def test_centred_basis_and_random_fill(tmp_path) -> None:
    _, dirs = _sources(tmp_path, n=2, r=2)
    report = ak.principal_subspace(dirs, 8, tmp_path / "b.safetensors")  # 4 vectors, centred: 3
    assert set(report.real_components.values()) == {3}
    basis = load_file(str(tmp_path / "b.safetensors"))
    for key, v in basis.items():
        torch.testing.assert_close(v.T @ v, torch.eye(8), atol=1e-5, rtol=0, msg=key)


def test_eigenlora_trains_2kr_per_site_and_reproduces_a_source(tmp_path) -> None:
    kit, dirs = _sources(tmp_path)
    ak.principal_subspace(dirs, 6, tmp_path / "basis.safetensors", center=False)
    model = build("bert")
    new = ak.AdapterKit(model)
    new.add("e", ak.EigenLoRA(basis=str(tmp_path / "basis.safetensors"), k=6, r=2, alpha=4))
    assert new.summary()[0]["trainable"] == 4 * 2 * 6 * 2  # 4 sites, 2 K r each
    # coefficients that project a source onto the basis reproduce its outputs
    basis = load_file(str(tmp_path / "basis.safetensors"))
    with torch.no_grad():
        for host, module in new.record("e").modules.items():
            src = kit.record("s1").modules[host]
            module.coef_A.copy_(basis[f"{host}.A"].T @ src.lora_A.T)
            module.coef_B.copy_(basis[f"{host}.B"].T @ src.lora_B * (src.scale / module.scale))
    x = inputs_for("bert")
    new.activate("e")
    kit.activate("s1")
    torch.testing.assert_close(run(model, "bert", x), run(kit.model, "bert", x), atol=1e-5, rtol=0)


def test_subspace_errors(tmp_path) -> None:
    _, dirs = _sources(tmp_path)
    kit = ak.AdapterKit(build("bert"))
    kit.add("bn", ak.Bottleneck(reduction=4))
    kit.save("bn", tmp_path / "bn")
    with pytest.raises(ak.AdapterError, match="holds a bottleneck adapter"):
        ak.principal_subspace([*dirs, tmp_path / "bn"], 2, tmp_path / "x.safetensors")
    _, other = _sources(tmp_path / "gpt2", n=1, family="gpt2")
    with pytest.raises(ak.AdapterError, match="different base models"):
        ak.principal_subspace([*dirs, *other], 2, tmp_path / "x.safetensors")
    _, ffn = _sources(tmp_path / "ffn", n=1, targets=("ffn.in",))
    with pytest.raises(ak.AdapterError, match="different sites"):
        ak.principal_subspace([*dirs, *ffn], 2, tmp_path / "x.safetensors")
    with pytest.raises(ak.AdapterError, match="k=40 exceeds the dimension 32"):
        ak.principal_subspace(dirs, 40, tmp_path / "x.safetensors")


def test_eigenlora_config_errors(tmp_path) -> None:
    _, dirs = _sources(tmp_path)
    path = str(tmp_path / "basis.safetensors")
    ak.principal_subspace(dirs, 4, path)
    kit = ak.AdapterKit(build("bert"))
    with pytest.raises(ak.ConfigError, match="not found"):
        kit.add("e", ak.EigenLoRA(basis=str(tmp_path / "missing.safetensors")))
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ak.ConfigError, match="is unreadable"):
        kit.add("e", ak.EigenLoRA(basis=str(tmp_path / "corrupt.safetensors")))
    with pytest.raises(ak.ConfigError, match="k=5 but the basis holds 4"):
        kit.add("e", ak.EigenLoRA(basis=path, k=5))
    with pytest.raises(ak.TargetError, match="have no components in the basis"):
        kit.add("e", ak.EigenLoRA(basis=path, targets=("attn.k",)))
    with pytest.raises(ak.TargetError, match="built for another model"):
        ak.AdapterKit(build("gpt2")).add("e", ak.EigenLoRA(basis=path))
    assert kit.names == []


def _trained_eigenlora(tmp_path, basis: str) -> tuple[ak.AdapterKit, torch.Tensor, dict]:
    kit = ak.AdapterKit(build("bert"))
    kit.add("e", ak.EigenLoRA(basis=basis, k=4, r=2, alpha=4))
    perturb(kit, "e", std=0.5, seed=9)
    kit.activate("e")
    x = inputs_for("bert")
    return kit, run(kit.model, "bert", x), x


def test_eigenlora_records_the_basis_digest_and_refuses_another_file(tmp_path) -> None:
    import hashlib
    import json

    _, dirs = _sources(tmp_path)
    basis = tmp_path / "basis.safetensors"
    ak.principal_subspace(dirs, 4, basis)
    kit, _, _ = _trained_eigenlora(tmp_path, str(basis))
    want = hashlib.sha256(basis.read_bytes()).hexdigest()
    assert kit.record("e").config.digest == want
    kit.save("e", tmp_path / "e")
    saved = json.loads((tmp_path / "e" / "adapter_config.json").read_text())
    assert saved["config"]["digest"] == want
    # another basis written at the same path: loading must refuse it, naming the file
    ak.principal_subspace(dirs[:2], 4, basis, seed=1)
    assert hashlib.sha256(basis.read_bytes()).hexdigest() != want
    fresh = ak.AdapterKit(build("bert"))
    with pytest.raises(ak.ConfigError, match="not the one this adapter was trained on"):
        fresh.load(tmp_path / "e")
    assert fresh.names == []
    with pytest.raises(ak.ConfigError, match="SHA-256"):
        ak.EigenLoRA(basis=str(basis), digest="abc")


def test_eigenlora_finds_a_basis_moved_with_its_adapter(tmp_path) -> None:
    import shutil

    _, dirs = _sources(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    ak.principal_subspace(dirs, 4, shared / "qv.safetensors")
    kit, want, x = _trained_eigenlora(tmp_path, str(shared / "qv.safetensors"))
    kit.save("e", shared / "task")
    moved = tmp_path / "moved"
    shutil.move(str(shared), str(moved))  # the basis and the adapter move together
    fresh = ak.AdapterKit(build("bert"))
    fresh.activate(fresh.load(moved / "task"))
    assert fresh.record("e").config.basis == str(moved / "qv.safetensors")
    assert torch.equal(run(fresh.model, "bert", x), want)
    (moved / "qv.safetensors").unlink()
    with pytest.raises(ak.ConfigError, match="not found"):
        ak.AdapterKit(build("bert")).load(moved / "task")
