"""Low-bit checkpoints (adapterkit.quantize) and quantisation-aware training."""

from __future__ import annotations

import json
import math

import pytest
import torch

import adapterkit as ak
from adapterkit import ops
from adapterkit.core.checkpoint import WEIGHTS_FILE, read_safetensors
from adapterkit.core.records import plain_state
from adapterkit.ops.quantize.model import CODES, SCALES, disable_qat

from .helpers import perturb
from .models import build, inputs_for, run

CONFIGS = {"lora": lambda: ak.LoRA(r=4, targets=("attn.q", "attn.v", "ffn.in")),
           "bottleneck": lambda: ak.Bottleneck(reduction=4, placement="both", layer_norm=True)}


def _saved(tmp_path, method: str, heads: tuple[str, ...] = ("classifier",)):
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", CONFIGS[method]())
    perturb(kit, "a", std=0.3)
    kit.train("a", train_also=heads)
    model.eval()
    kit.save("a", tmp_path / "fp32")
    return kit


def _loaded(path) -> ak.AdapterKit:
    kit = ak.AdapterKit(build("bert"))
    kit.load(path)
    return kit


def _sign_times_mean(t: torch.Tensor) -> torch.Tensor:
    """1 bit: one scale per channel along the smaller side of the (shape[0], rest) view."""
    x = t.reshape(t.shape[0], -1).double()
    axis = 0 if x.shape[0] > x.shape[1] else 1  # columns are the channels of a tall matrix
    scale = x.abs().mean(dim=axis, keepdim=True).float().double()
    return torch.where(x >= 0, scale, -scale).float().reshape(t.shape)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_one_bit_is_sign_times_scale_after_save_and_load(tmp_path, method: str) -> None:
    kit = _saved(tmp_path, method)
    report = ak.quantize(tmp_path / "fp32", 1, tmp_path / "q1")
    meta = json.loads((tmp_path / "q1" / "adapter_config.json").read_text())
    assert meta["quantization"]["bits"] == 1 and meta["quantization"]["scheme"].startswith("sign")
    loaded = _loaded(tmp_path / "q1")
    for host, module in kit.record("a").modules.items():
        got = plain_state(loaded.record("a").modules[host])
        for key, t in module.state_dict().items():
            want = _sign_times_mean(t) if t.dim() >= 2 else \
                ops.dequantize_tensor(ops.quantize_tensor(t, 8))  # vectors: 8 bits
            assert torch.equal(got[key], want), (host, key)
    # heads stay in full precision
    assert torch.equal(loaded.model.classifier.weight, kit.model.classifier.weight)
    assert report.ratio > 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_more_bits_less_error(tmp_path, bits: int) -> None:
    kit = _saved(tmp_path, "lora")
    ak.quantize(tmp_path / "fp32", bits, tmp_path / f"q{bits}", vector_bits=None)
    loaded = _loaded(tmp_path / f"q{bits}")
    for host, module in kit.record("a").modules.items():
        other = loaded.record("a").modules[host]
        for name in ("lora_A", "lora_B"):
            w, q = getattr(module, name), getattr(other, name)
            rel = float(((w - q).norm() / w.norm()).detach())
            assert rel < {2: 0.6, 4: 0.15, 8: 0.01}[bits], (host, name, rel)
    x = inputs_for("bert")
    kit.activate("a")
    loaded.activate("a")
    torch.testing.assert_close(run(loaded.model, "bert", x), run(kit.model, "bert", x),
                               atol={2: 1.0, 4: 0.3, 8: 0.02}[bits], rtol=0)


def test_file_sizes(tmp_path) -> None:
    """Codes take ``ceil(n * bits / 8)`` bytes and each channel one float32 scale."""
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=8, targets=("all-linear",)))
    perturb(kit, "a")
    kit.save("a", tmp_path / "fp32")
    fp32 = (tmp_path / "fp32" / WEIGHTS_FILE).stat().st_size
    values = sum(p.numel() for p in kit.parameters("a"))
    for bits in (1, 2, 4, 8):
        report = ak.quantize(tmp_path / "fp32", bits, tmp_path / f"q{bits}")
        q = read_safetensors(tmp_path / f"q{bits}" / WEIGHTS_FILE)
        n_codes = q[f"{CODES}{bits}"].numel()
        assert n_codes == sum(math.ceil(p.numel() * bits / 8) for p in kit.parameters("a"))
        assert q[SCALES].numel() == 2 * 8 * len(kit.record("a").sites)  # 2r scales per site
        size = (tmp_path / f"q{bits}" / WEIGHTS_FILE).stat().st_size
        assert size == report.bytes_after and report.bytes_before == fp32
        assert size < n_codes + 4 * q[SCALES].numel() + 512  # + the safetensors header
        assert fp32 > 4 * values > size


def test_one_bit_lora_is_over_20x_smaller_at_width_384(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(384, 384), torch.nn.ReLU(), torch.nn.Linear(384, 384))
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=8, targets=("0", "2")))
    perturb(kit, "a")
    kit.save("a", tmp_path / "fp32")
    report = ak.quantize(tmp_path / "fp32", 1, tmp_path / "q1")
    assert report.ratio > 20, report


def test_qat_trains_on_quantized_values_and_saves_them(tmp_path) -> None:
    model = build("bert")
    kit = ak.AdapterKit(model)
    kit.add("a", CONFIGS["bottleneck"]())
    perturb(kit, "a")
    params = kit.train("a", train_also=("classifier",), quantize_bits=1)
    assert kit.record("a").extra["qat"] == {"bits": 1, "vector_bits": 8}
    x = inputs_for("bert")
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(3):
        loss = run(model, "bert", x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params)  # straight-through to the latents
        opt.step()
    model.eval()
    want = run(model, "bert", x)
    module = next(iter(kit.record("a").modules.values()))
    assert module.down.weight.abs().unique().numel() <= module.down.weight.shape[0]  # 1 bit
    kit.save("a", tmp_path / "qat")
    ak.quantize(tmp_path / "qat", 1, tmp_path / "qat1")
    for path in ("qat", "qat1"):  # the stored (and requantised) values are the trained ones
        loaded = _loaded(tmp_path / path)
        loaded.activate("a")
        assert torch.equal(run(loaded.model, "bert", x), want)
    disable_qat(kit, "a")
    assert torch.equal(run(model, "bert", x), want)
    assert "parametrizations" not in "".join(module.state_dict())


def test_quantize_errors(tmp_path) -> None:
    _saved(tmp_path, "lora")
    ak.quantize(tmp_path / "fp32", 4, tmp_path / "q4")
    with pytest.raises(ak.LoadError, match="quantised already"):
        ak.quantize(tmp_path / "q4", 1, tmp_path / "again")
    with pytest.raises(ValueError, match="bits must be one of"):
        ak.quantize(tmp_path / "fp32", 3, tmp_path / "q3")
    kit = ak.AdapterKit(build("bert"))
    kit.add("a", ak.LoRA())
    with pytest.raises(ValueError, match="quantize_bits must be one of"):
        kit.train("a", quantize_bits=5)
    blob = read_safetensors(tmp_path / "q4" / WEIGHTS_FILE)
    meta = json.loads((tmp_path / "q4" / "adapter_config.json").read_text())
    meta["quantization"]["tensors"] = meta["quantization"]["tensors"][:-1]
    from adapterkit.ops.quantize.model import dequantize_checkpoint

    with pytest.raises(ak.LoadError, match="do not match the index"):
        dequantize_checkpoint(meta, blob)
