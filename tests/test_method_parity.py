"""IA3, DoRA and VeRA against PEFT's implementations, given the same weights.

Each test builds the same tiny model twice, adds our adapter to one and PEFT's to the other,
gives PEFT's adapter random weights, copies them into ours by PEFT's state-dict keys and compares
the outputs (and, for DoRA, the gradients). GPT-2 covers transformers' Conv1D.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peft
import pytest
import torch
from torch import nn

import adapterkit as ak

from .helpers import peft_pair
from .models import build, inputs_for, run

# PEFT switches fan_in_fan_out on for GPT-2's Conv1D by itself, with a warning
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out:UserWarning")

FAMILIES = ("llama", "bert", "gpt2")
TOL = 1e-5
#: our default "attn.q", "attn.v" targets as PEFT module names
QV = {"llama": ["q_proj", "v_proj"], "bert": ["query", "value"], "gpt2": ["c_attn"]}
#: IA3's default targets ("attn.k", "attn.v", "ffn.out") and feedforward ("ffn.out",) for PEFT;
#: a regular expression for BERT, where "output.dense" would also match attention.output.dense
_BERT_FFN_OUT = r".*\.layer\.\d+\.output\.dense"
IA3_TARGETS: dict[str, tuple[Any, Any]] = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "bert": (rf".*\.attention\.self\.(key|value)|{_BERT_FFN_OUT}", _BERT_FFN_OUT),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}
PREFIX = "base_model.model."


def _pair(family: str, config: Any, peft_config: Any) -> tuple[nn.Module, ak.AdapterKit, Any]:
    ours, kit, theirs = peft_pair(family, config, peft_config)
    assert kit.summary()[0]["trainable"] == theirs.get_nb_trainable_parameters()[0]
    return ours, kit, theirs


def _randomise(theirs: Any,
               how: Callable[[str, torch.Tensor, torch.Generator], torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, p in theirs.named_parameters():
            if p.requires_grad:
                p.copy_(how(key, p, g))


def _copy(kit: ak.AdapterKit, theirs: Any, keys: dict[str, str],
          convert: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, t: t) -> None:
    """Our tensor ``name`` of the module at ``host`` <- PEFT's ``base_model.model.{host}.{key}``."""
    sd = theirs.state_dict()
    with torch.no_grad():
        for host, module in kit.record("a").modules.items():
            for name, key in keys.items():
                getattr(module, name).copy_(convert(name, sd[f"{PREFIX}{host}.{key}"]))


def _outputs(family: str, ours: nn.Module, theirs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs_for(family)
    a, b = run(ours, family, x), run(theirs.base_model.model, family, x)
    with torch.no_grad():  # the adapter moves the output well beyond the tolerance
        effect = (a - run(build(family), family, x)).abs().max().item()
    assert effect > 10 * TOL, f"the adapter changed the output by only {effect:.2e}"
    return a, b


def _check(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a - b).abs().max().item()
    print(f"{what}: max |ours - PEFT| = {err:.2e}")
    assert err <= TOL, f"{what}: max abs error {err:.2e} > {TOL}"


# -- IA3 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_ia3_matches_peft(family: str) -> None:
    targets, ff = IA3_TARGETS[family]
    ours, kit, theirs = _pair(family, ak.IA3(), peft.IA3Config(
        target_modules=targets, feedforward_modules=ff))
    _randomise(theirs, lambda k, p, g: 1 + torch.randn(p.shape, generator=g))
    _copy(kit, theirs, {"ia3_offset": "ia3_l.default"}, lambda n, t: t.flatten() - 1)
    modules = kit.record("a").modules.values()
    assert sum(m.feedforward for m in modules) == 2 and not all(m.feedforward for m in modules)
    a, b = _outputs(family, ours, theirs)
    _check(a, b, f"ia3 {family}")
    kit.merge("a")  # PEFT-merged and ours-merged agree too
    theirs.merge_adapter()
    _check(*_outputs(family, ours, theirs), f"ia3 merged {family}")


# -- DoRA --------------------------------------------------------------------------------------
def _dora_weights(key: str, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if "magnitude" in key:  # keep the magnitudes near the column norms
        return p * (1 + 0.3 * torch.randn(p.shape, generator=g))
    return 0.2 * torch.randn(p.shape, generator=g)


_DORA_KEYS = {"lora_A": "lora_A.default.weight", "lora_B": "lora_B.default.weight",
              "magnitude": "lora_magnitude_vector.default.weight"}


def _dora_pair(family: str, **kw: Any) -> tuple[nn.Module, ak.AdapterKit, Any]:
    peft_kw = {"lora_dropout": kw.get("dropout", 0.0), "use_rslora": kw.get("use_rslora", False)}
    ours, kit, theirs = _pair(family, ak.DoRA(r=4, alpha=8, **kw), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=QV[family], use_dora=True, **peft_kw))
    _randomise(theirs, _dora_weights)
    _copy(kit, theirs, _DORA_KEYS)
    return ours, kit, theirs


@pytest.mark.parametrize("family", FAMILIES)
def test_dora_init_matches_peft(family: str) -> None:
    """The same magnitude at init: the column norms of the base weight."""
    _, kit, theirs = _pair(family, ak.DoRA(r=4, alpha=8), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=QV[family], use_dora=True))
    sd = theirs.state_dict()
    for host, module in kit.record("a").modules.items():
        want = sd[f"{PREFIX}{host}.{_DORA_KEYS['magnitude']}"]
        torch.testing.assert_close(module.magnitude, want, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rslora", [False, True])
def test_dora_matches_peft(family: str, rslora: bool) -> None:
    ours, kit, theirs = _dora_pair(family, use_rslora=rslora)
    a, b = _outputs(family, ours, theirs)
    _check(a, b, f"dora {family} rslora={rslora}")
    # the norm is detached on both sides: the gradients agree as well
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    grads = theirs.state_dict(keep_vars=True)
    for host, module in kit.record("a").modules.items():
        for name, key in _DORA_KEYS.items():
            g = grads[f"{PREFIX}{host}.{key}"].grad
            assert g.abs().max() > 0
            _check(getattr(module, name).grad, g, f"dora grad {family} {host} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_dora_dropout_matches_peft_in_training(family: str) -> None:
    """Both draw one dropout mask per site, in the same order, and use it for both terms."""
    ours, _, theirs = _dora_pair(family, dropout=0.3)
    ours.train()
    theirs.train()
    x = inputs_for(family)
    torch.manual_seed(5)
    a = run(ours, family, x)
    torch.manual_seed(5)
    b = run(theirs.base_model.model, family, x)
    _check(a, b, f"dora dropout {family}")
    torch.manual_seed(6)  # another mask: another output
    assert not torch.allclose(run(ours, family, x), a)


# -- VeRA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", [0, 1234])
def test_vera_matches_peft(family: str, key: int) -> None:
    ours, kit, theirs = _pair(family, ak.VeRA(r=8, projection_prng_key=key), peft.VeraConfig(
        r=8, target_modules=QV[family], projection_prng_key=key))
    # same projections, drawn from the same key and sliced the same way
    peft_a, peft_b = theirs.base_model.vera_A["default"], theirs.base_model.vera_B["default"]
    for module in kit.record("a").modules.values():
        assert torch.equal(module.vera_A, peft_a[:, : module.vera_A.shape[1]])
        assert torch.equal(module.vera_B, peft_b[: module.vera_B.shape[0]])
    _randomise(theirs, lambda k, p, g: 0.5 * torch.randn(p.shape, generator=g))
    _copy(kit, theirs, {"lambda_d": "vera_lambda_d.default", "lambda_b": "vera_lambda_b.default"})
    a, b = _outputs(family, ours, theirs)
    _check(a, b, f"vera {family} key={key}")


# -- SHiRA -------------------------------------------------------------------------------------
#: PEFT's SHiRA takes nn.Linear only (no GPT-2 Conv1D), sizes masks by r only (our ``fraction``
#: has no PEFT counterpart) and knows only the random mask; the magnitude mask goes in through
#: its ``mask_fn`` hook, written here independently of ours
SHIRA_FAMILIES = ("llama", "bert")


def _magnitude_mask(base_layer: nn.Module, r: int, **kwargs: Any) -> torch.Tensor:
    """PEFT ``mask_fn``: 1 at the ``r * (in + out)`` entries of largest ``|W|``, else 0."""
    w = base_layer.weight
    k = r * (w.shape[0] + w.shape[1])
    mask = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
    mask[w.detach().abs().flatten().argsort(descending=True)[:k]] = 1
    return mask.view_as(w)


@pytest.mark.filterwarnings("ignore:Argument self.mask_type:UserWarning")
@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
@pytest.mark.parametrize("family", SHIRA_FAMILIES)
@pytest.mark.parametrize(("mask_type", "seed"), [("random", None), ("random", 7), ("magnitude", None)])
def test_shira_matches_peft(family: str, mask_type: str, seed: int | None) -> None:
    peft_config = peft.ShiraConfig(r=2, target_modules=QV[family], random_seed=seed,
                                   mask_type=mask_type)
    if mask_type == "magnitude":
        peft_config.mask_fn = _magnitude_mask
    ours, kit, theirs = _pair(family, ak.SHiRA(r=2, mask_type=mask_type, random_seed=seed),
                              peft_config)
    # the same mask: PEFT's (2, k) row and column indices against our sorted flat indices
    for host, module in kit.record("a").modules.items():
        rows, cols = theirs.base_model.model.get_submodule(host).shira_indices["default"].long()
        assert torch.equal(rows * module.shape[1] + cols, module.shira_indices)
    _randomise(theirs, lambda k, p, g: 0.5 * torch.randn(p.shape, generator=g))
    _copy(kit, theirs, {"shira_weight": "shira_weight.default"})
    a, b = _outputs(family, ours, theirs)
    _check(a, b, f"shira {family} {mask_type} seed={seed}")
    kit.merge("a")
    theirs.merge_adapter()
    _check(*_outputs(family, ours, theirs), f"shira merged {family} {mask_type} seed={seed}")


# -- PiSSA -------------------------------------------------------------------------------------
def _pissa_pair(family: str, rslora: bool = False) -> tuple[nn.Module, ak.AdapterKit, Any]:
    return _pair(family, ak.LoRA(r=4, alpha=8, init="pissa", use_rslora=rslora), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=QV[family], init_lora_weights="pissa",
        use_rslora=rslora))


def _lora_weights(key: str, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return p + 0.3 * torch.randn(p.shape, generator=g)


_LORA_KEYS = {"lora_A": "lora_A.default.weight", "lora_B": "lora_B.default.weight"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rslora", [False, True])
def test_pissa_matches_peft(family: str, rslora: bool) -> None:
    """The same factors and residual base weights from the same base, and the same outputs at
    init (the base model's, up to rounding) and with trained factors."""
    ours, kit, theirs = _pissa_pair(family, rslora)
    sd = theirs.state_dict()
    for host, module in kit.record("a").modules.items():
        for name, key in _LORA_KEYS.items():
            _check(getattr(module, name), sd[f"{PREFIX}{host}.{key}"], f"pissa {family} {host} {name}")
        residual = sd[f"{PREFIX}{host}.base_layer.weight"]
        assert not torch.allclose(residual, build(family).get_submodule(host).weight)
        _check(ours.get_submodule(host).weight, residual, f"pissa {family} {host} residual")
    x = inputs_for(family)
    a, b = run(ours, family, x), run(theirs.base_model.model, family, x)
    _check(a, b, f"pissa {family} at init")
    _check(a, run(build(family), family, x), f"pissa {family} at init vs the base model")
    _randomise(theirs, _lora_weights)
    _copy(kit, theirs, _LORA_KEYS)
    _check(*_outputs(family, ours, theirs), f"pissa {family} trained")


@pytest.mark.parametrize("family", FAMILIES)
def test_pissa_to_lora_matches_peft_conversion(family: str, tmp_path) -> None:
    """``save_pissa_as_lora(format="peft")`` writes the tensors and scale of PEFT's
    ``save_pretrained(path_initial_model_for_weight_conversion=...)``, and PEFT loads it onto the
    original base to the outputs of the PiSSA adapter on its residual base."""
    from safetensors.torch import load_file

    ours, kit, theirs = _pissa_pair(family)
    theirs.peft_config["default"].init_lora_weights = True  # PEFT's recipe: save the init as LoRA
    theirs.save_pretrained(tmp_path / "init")
    theirs.peft_config["default"].init_lora_weights = "pissa"
    _randomise(theirs, _lora_weights)
    _copy(kit, theirs, _LORA_KEYS)
    with pytest.warns(UserWarning, match="PiSSA changes the base weights"):
        theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(
            tmp_path / "init"))
    ak.save_pissa_as_lora(kit, "a", tmp_path / "ours", format="peft")
    want, got = load_file(tmp_path / "peft" / "adapter_model.safetensors"), load_file(
        tmp_path / "ours" / "adapter_model.safetensors")
    assert set(got) == set(want)
    for key in want:
        assert got[key].shape[:2] in ((8, want[key].shape[1]), (want[key].shape[0], 8))
        _check(got[key], want[key], f"pissa->lora {family} {key}")
    cfg = peft.PeftConfig.from_pretrained(tmp_path / "ours")
    assert (cfg.r, cfg.lora_alpha, cfg.init_lora_weights) == (8, 16, True)
    loaded = peft.PeftModel.from_pretrained(build(family), tmp_path / "ours")
    x = inputs_for(family)
    _check(run(loaded.base_model.model, family, x), run(ours, family, x), f"pissa->lora {family}")
