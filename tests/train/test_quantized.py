"""Adapters on a quantized base (bitsandbytes NF4/FP4 and int8, torchao int8 weight-only) and
on half-precision bases: fp32 adapter parameters, training, saving and reloading, and merge
within the reported rounding error or refused."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T

import adapterkit as ak
from adapterkit.core import hosts
from adapterkit.errors import NotMergeableError, TargetError

from ..models import build

IDS = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    # 128 wide: bitsandbytes' CPU 4-bit kernels need in_features >= their block size (64)
    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=64,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    T.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def _bnb(llama_dir, kind: str):
    if kind == "8bit":
        cfg = T.BitsAndBytesConfig(load_in_8bit=True)
    else:
        cfg = T.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind,
                                   bnb_4bit_compute_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=cfg,
                                                      device_map="cpu").eval()


def _torchao(llama_dir):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = T.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    quantize_(model.model.layers, Int8WeightOnlyConfig())
    return model


def _train(kit, name: str, steps: int = 3) -> None:
    params = kit.train(name)
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        loss = kit.model(input_ids=IDS, labels=IDS).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    kit.model.eval()


METHODS = {
    "lora": ak.LoRA(r=4, targets=("attn.q", "attn.v", "ffn.out")),
    "dora": ak.DoRA(r=4, targets=("attn.q", "attn.v")),
    "ia3": ak.IA3(),
    "vera": ak.VeRA(r=8, targets=("attn.q", "attn.v")),
    "bottleneck": ak.Bottleneck(reduction=4, placement="ffn"),
}


@pytest.mark.parametrize("kind", ["nf4", "fp4", "8bit"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_train_on_bnb(llama_dir, kind: str, method: str) -> None:
    model = _bnb(llama_dir, kind)
    kit = ak.AdapterKit(model)
    q = model.model.layers[0].self_attn.q_proj
    assert hosts.kind_of(q) == ("bnb-8bit" if kind == "8bit" else "bnb-4bit")
    kit.add("a", METHODS[method])
    params = kit.trainable_parameters("a")
    assert params and all(p.dtype == torch.float32 for p in params)
    before = [p.detach().clone() for p in params]
    _train(kit, "a")
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    assert model.model.layers[0].self_attn.q_proj.weight.dtype in (torch.uint8, torch.int8)


def test_qlora_nf4_saves_reloads_and_merges(llama_dir, tmp_path) -> None:
    model = _bnb(llama_dir, "nf4")
    kit = ak.AdapterKit(model)
    kit.add("q", ak.LoRA(r=4, targets=("all-linear",)))
    _train(kit, "q", steps=4)
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    kit.save("q", tmp_path / "q")
    fresh = _bnb(llama_dir, "nf4")
    fk = ak.AdapterKit(fresh)
    fk.activate(fk.load(tmp_path / "q"))
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=IDS).logits, want)
    host = fresh.model.layers[0].self_attn.q_proj
    w0 = hosts.dense_weight(host).clone()
    exact = w0 + fk.record("q").modules["model.layers.0.self_attn.q_proj"].delta_weight(host)
    with pytest.warns(UserWarning, match="rounding error"):
        report = fk.merge("q")
    err = report.rounding_error["model.layers.0.self_attn.q_proj"]
    got = hosts.dense_weight(host)
    assert 0 < err == pytest.approx(float((got - exact).abs().max()))
    assert err < 0.2 * float(exact.abs().max())  # a 4-bit rounding, not a broken merge
    fk.unmerge("q")  # restores the quantized weight exactly
    assert torch.equal(hosts.dense_weight(host), w0)
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=IDS).logits, want)


def test_merge_on_int8_within_reported_error(llama_dir) -> None:
    model = _bnb(llama_dir, "8bit")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4, targets=("attn.q",)))
    _train(kit, "a", steps=3)
    host = model.model.layers[1].self_attn.q_proj
    x = torch.randn(3, host.in_features)
    with torch.no_grad():
        unmerged = host(x)
        report = kit.merge("a")
        merged = host(x)
    err = report.rounding_error["model.layers.1.self_attn.q_proj"]
    # |(W' - W - dW) x| <= err * |x|_1 per output, plus fp16 matmul rounding
    bound = err * x.abs().sum(-1, keepdim=True) + 2e-2 * unmerged.abs().max()
    assert ((merged - unmerged).abs() <= bound).all()


def test_torchao_int8_trains_and_merge_is_refused(llama_dir) -> None:
    model = _torchao(llama_dir)
    kit = ak.AdapterKit(model)
    assert hosts.kind_of(model.model.layers[0].self_attn.q_proj) == "torchao-int8"
    kit.add("a", ak.LoRA(r=4, targets=("attn.q", "attn.v")))
    _train(kit, "a")
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    with pytest.raises(NotMergeableError, match="torchao int8"):
        kit.merge("a")
    assert not kit.record("a").merged
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, before)


def test_unknown_quantized_backends_are_refused(llama_dir) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = T.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    quantize_(model.model.layers[0], Int8DynamicActivationInt8WeightConfig())
    with pytest.raises(TargetError, match="not supported; supported quantized hosts"):
        ak.AdapterKit(model).add("a", ak.LoRA(targets=("attn.q",)))
    assert not ak.AdapterKit(model).names
    bnb_model = _bnb(llama_dir, "nf4")
    with pytest.raises(TargetError, match="cannot attach to quantized hosts"):
        ak.AdapterKit(bnb_model).add("s", ak.SHiRA(targets=("attn.q",)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_base_gets_fp32_adapters_and_trains_under_autocast(dtype) -> None:
    model = build("llama").to(dtype)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4, targets=("attn.q", "attn.v")))
    kit.add("b", ak.Bottleneck(reduction=4), dtype=dtype)  # chosen per adapter
    kit.adapter_dtype = torch.bfloat16  # or for the kit
    kit.add("c", ak.IA3())
    assert {p.dtype for p in kit.parameters("a")} == {torch.float32}
    assert {p.dtype for p in kit.parameters("b")} == {dtype}
    assert {p.dtype for p in kit.parameters("c")} == {torch.bfloat16}
    params = kit.train("a")
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(4):
        with torch.autocast("cpu", torch.bfloat16):
            loss = model(input_ids=IDS, labels=IDS).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        opt.step()
        losses.append(float(loss))
    assert all(not torch.equal(b, p) for b, p in zip(before, params))
    assert {p.dtype for p in kit.parameters("a")} == {torch.float32}
    assert losses[-1] < losses[0]


def test_lora_under_autocast_matches_explicit_casts() -> None:
    """Under autocast the input goes straight to the kernels (no fp32 round trip): the delta
    equals the one computed from explicitly cast operands, for bf16 and fp32 inputs."""
    lin = torch.nn.Linear(8, 6)
    kit = ak.AdapterKit(torch.nn.Sequential(lin))
    kit.add("a", ak.LoRA(r=2, targets=("0",)))
    kit.activate("a")
    mod = lin.adapterkit["a"]
    torch.nn.init.normal_(mod.lora_B)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(3, 8).to(dtype)
        with torch.autocast("cpu", torch.bfloat16):
            got = mod.delta(lin(x), x, lin)
        a, b = mod.lora_A.bfloat16(), mod.lora_B.bfloat16()
        want = (torch.nn.functional.linear(torch.nn.functional.linear(x.bfloat16(), a), b)
                * mod.scale).bfloat16()
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, want, rtol=0, atol=0)
