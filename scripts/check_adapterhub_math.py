"""Verify tests/fixtures/adapterhub/FORMAT.md: re-implement BERT + each AdapterHub adapter by hand.

Plain torch only (plus `safetensors` for reading): no `transformers`, no `adapters`.
Reads the base weights (base_model.safetensors + base_config.json), each adapter directory
as written by `adapters`' `model.save_adapter()` (adapter_config.json + pytorch_adapter.bin or
adapter.safetensors), recomputes `last_hidden_state` and compares with
expected_outputs.safetensors.

Usage: python scripts/check_adapterhub_math.py [FIXTURE_DIR]   (exit 1 on mismatch)
"""

import json
import math
import os
import sys

import torch
from safetensors.torch import load_file

TOL = 1e-5

# adapter directory -> key prefix of its expected output in expected_outputs.safetensors
ADAPTER_DIRS = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",
    "par_bn": "par_bn",
    "lora_bin": "lora",
    "lora_safetensors": "lora",
}


# ----------------------------------------------------------------------------- loading


def load_adapter_dir(d):
    """Return (full adapter_config.json dict, state dict) of a save_adapter() directory."""
    with open(os.path.join(d, "adapter_config.json"), encoding="utf-8") as f:
        meta = json.load(f)
    st = os.path.join(d, "adapter.safetensors")
    pt = os.path.join(d, "pytorch_adapter.bin")
    sd = load_file(st) if os.path.exists(st) else torch.load(pt, map_location="cpu", weights_only=True)
    # adapters saved from a model with heads (e.g. BertAdapterModel) carry a "bert." prefix
    if sd and all(k.startswith("bert.") for k in sd):
        sd = {k[len("bert.") :]: v for k, v in sd.items()}
    return meta, sd


# ----------------------------------------------------------------------------- primitives


def linear(x, w, b=None):
    y = x @ w.t()
    return y + b if b is not None else y


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as nn.LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


ACTIVATIONS = {
    # names as in BnConfig.non_linearity (lower-cased), resolved by transformers' ACT2FN
    "relu": torch.relu,
    "swish": lambda x: x * torch.sigmoid(x),  # ACT2FN["swish"] = nn.SiLU
    "silu": lambda x: x * torch.sigmoid(x),
    "gelu": gelu_erf,  # exact erf GELU
    "gelu_new": lambda x: (
        0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    ),
    "tanh": torch.tanh,
    "leakyrelu": lambda x: torch.nn.functional.leaky_relu(x),  # slope 0.01
}


# ----------------------------------------------------------------------------- adapters


class Bottleneck:
    """Hand-written bottleneck adapter (adapters/methods/modeling.py: Adapter, ParallelAdapter)."""

    def __init__(self, cfg, sd, name):
        for k, unsupported in [
            ("ln_before", True),
            ("ln_after", True),
            ("use_gating", True),
            ("phm_layer", True),
        ]:
            if cfg.get(k) == unsupported:
                raise NotImplementedError(f"{k}={unsupported}")
        if cfg.get("inv_adapter"):
            raise NotImplementedError("inv_adapter")
        if not isinstance(cfg["scaling"], (int, float)):
            raise NotImplementedError(f"scaling={cfg['scaling']!r}")
        self.cfg, self.sd, self.name = cfg, sd, name
        self.act = ACTIVATIONS[cfg["non_linearity"].lower()]
        self.scaling = float(cfg["scaling"])

    def weights(self, prefix):
        p = f"{prefix}.adapters.{self.name}."
        if p + "adapter_up.weight" not in self.sd:
            return None
        return (
            self.sd[p + "adapter_down.0.weight"],
            self.sd[p + "adapter_down.0.bias"],
            self.sd[p + "adapter_up.weight"],
            self.sd[p + "adapter_up.bias"],
        )

    def sublayer(self, prefix, h, x, ln):
        """Replaces `LayerNorm(h + x)` at the end of BertSelfOutput / BertOutput.

        prefix: "encoder.layer.{i}.attention.output" (mh_adapter) or "encoder.layer.{i}.output"
        (output_adapter); h: dense(sub-block) output (after dropout); x: the sub-block input
        (`input_tensor`, i.e. the residual); ln: the pre-trained LayerNorm of that sub-block.
        """
        w = self.weights(prefix)
        if w is None:  # no adapter at this location (or layer in leave_out)
            return ln(h + x)
        wd, bd, wu, bu = w

        def bottleneck(z):
            return linear(self.act(linear(z, wd, bd)), wu, bu) * self.scaling

        c = self.cfg
        if c["is_parallel"]:
            # ParallelAdapter.pre_forward: adapter input = input_tensor (x)
            out = h + bottleneck(x)  # ParallelAdapter.post_forward adds dense output
            return ln(out + x) if c["original_ln_after"] else out
        # Adapter.pre_forward
        rbl = c["residual_before_ln"]
        residual = h if rbl is True else None
        hs = h
        if c["original_ln_before"]:
            hs = h + x
            if rbl == "post_add":
                residual = hs
            hs = ln(hs)
        if not rbl:
            residual = hs
        # Adapter.forward (no ln_after, no gating)
        out = bottleneck(hs) + residual
        # Adapter.post_forward
        return ln(out + x) if c["original_ln_after"] else out


class LoRA:
    """Hand-written LoRA (adapters/methods/lora.py: LoRA, LoRALinear)."""

    def __init__(self, cfg, sd, name):
        if (
            cfg["composition_mode"] != "add"
            or cfg.get("use_dora")
            or cfg.get("vera_d") is not None
            or cfg.get("vera_b") is not None
        ):
            raise NotImplementedError("only plain additive LoRA")
        self.cfg, self.sd, self.name = cfg, sd, name
        self.scaling = cfg["alpha"] / cfg["r"]

    def delta(self, module_prefix, x):
        """Additive term for the Linear at `module_prefix` (e.g. ...attention.self.query)."""
        p = f"{module_prefix}.loras.{self.name}."
        if p + "lora_A" not in self.sd:
            return 0.0
        a, b = self.sd[p + "lora_A"], self.sd[p + "lora_B"]  # A: (r, in), B: (out, r)
        d = x @ a.t() @ b.t()
        if self.cfg.get("use_gating"):
            # gate replaces the alpha/r scaling (LoRA.forward)
            g = torch.sigmoid(linear(x, self.sd[p + "gate.weight"], self.sd[p + "gate.bias"]))
            return d * g.mean(dim=1).unsqueeze(-1)
        return d * self.scaling


def make_adapter(meta, sd):
    cfg, name = meta["config"], meta["name"]
    if cfg.get("architecture") == "lora":
        return LoRA(cfg, sd, name)
    if cfg.get("architecture") is None:
        return Bottleneck(cfg, sd, name)
    raise NotImplementedError(cfg.get("architecture"))


# ----------------------------------------------------------------------------- BERT


def bert_forward(W, bc, input_ids, attention_mask, adapter=None):
    """Hand-written transformers BertModel.forward (eval, absolute positions) -> last hidden."""
    eps = bc["layer_norm_eps"]
    H, nh = bc["hidden_size"], bc["num_attention_heads"]
    dh = H // nh
    bsz, T = input_ids.shape
    assert bc.get("hidden_act", "gelu") == "gelu"
    lora = adapter if isinstance(adapter, LoRA) else None
    bn = adapter if isinstance(adapter, Bottleneck) else None

    def ln_fn(prefix):
        return lambda z: layer_norm(z, W[prefix + ".weight"], W[prefix + ".bias"], eps)

    def proj(prefix, z):
        y = linear(z, W[prefix + ".weight"], W[prefix + ".bias"])
        if lora is not None:
            y = y + lora.delta(prefix, z)
        return y

    # embeddings (token_type_ids = 0, position_ids = 0..T-1)
    h = (
        W["embeddings.word_embeddings.weight"][input_ids]
        + W["embeddings.token_type_embeddings.weight"][torch.zeros_like(input_ids)]
        + W["embeddings.position_embeddings.weight"][torch.arange(T)][None]
    )
    h = ln_fn("embeddings.LayerNorm")(h)

    # additive key mask: 0 for keep, float32 min for masked keys
    ext = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min

    for i in range(bc["num_hidden_layers"]):
        L = f"encoder.layer.{i}"
        x = h

        def split(t):
            return t.view(bsz, T, nh, dh).transpose(1, 2)

        q = split(proj(f"{L}.attention.self.query", x))
        k = split(proj(f"{L}.attention.self.key", x))
        v = split(proj(f"{L}.attention.self.value", x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + ext
        ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(bsz, T, H)
        a = proj(f"{L}.attention.output.dense", ctx)
        ln1 = ln_fn(f"{L}.attention.output.LayerNorm")
        att = bn.sublayer(f"{L}.attention.output", a, x, ln1) if bn else ln1(a + x)

        inter = gelu_erf(proj(f"{L}.intermediate.dense", att))
        o = proj(f"{L}.output.dense", inter)
        ln2 = ln_fn(f"{L}.output.LayerNorm")
        h = bn.sublayer(f"{L}.output", o, att, ln2) if bn else ln2(o + att)
    return h


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/adapterhub"
    W = load_file(os.path.join(root, "base_model.safetensors"))
    with open(os.path.join(root, "base_config.json")) as f:
        bc = json.load(f)
    E = load_file(os.path.join(root, "expected_outputs.safetensors"))
    ids, mask = E["input_ids"], E["attention_mask"]

    ok = True
    results = []
    with torch.no_grad():
        base = bert_forward(W, bc, ids, mask)
        err = (base - E["base_last_hidden_state"]).abs().max().item()
        results.append(("base", err))
        for d, key in ADAPTER_DIRS.items():
            meta, sd = load_adapter_dir(os.path.join(root, d))
            out = bert_forward(W, bc, ids, mask, make_adapter(meta, sd))
            exp = E[f"{key}_last_hidden_state"]
            err = (out - exp).abs().max().item()
            # sanity: the adapter must actually change the output
            eff = (exp - E["base_last_hidden_state"]).abs().max().item()
            results.append((f"{d} (effect {eff:.3f})", err))
    for n, err in results:
        good = err < TOL
        ok &= good
        print(f"{'OK  ' if good else 'FAIL'} {n:32s} max abs err {err:.3e}")
    print(f"all within {TOL:.0e}" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
