"""The method table: (config per family) with the tolerances each invariant uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import adapterkit as ak

from .basis import basis_for
from .models import MODELS


@dataclass(frozen=True)
class MethodCase:
    id: str
    make: Callable[[str], Any]  # family -> config
    identity_at_init: bool = True
    merge_tol: float = 1e-5  # fp32: merged and merge->unmerge vs unmerged outputs
    train_ratio: float = 0.5  # final / first loss after 30 steps on the reachable toy task
    families: tuple[str, ...] | None = None  # the tiny models the method supports; None: all
    prepends: int = 0  # positions a prompt puts in front of every sequence output
    #: identity at init up to this absolute error (0: bit exact), for methods that rewrite the
    #: base weights at init (PiSSA's residual base plus its principal part: float rounding)
    init_tol: float = 0.0


#: the families prompt and prefix tuning support (text models taking inputs_embeds and a Cache)
TEXT = ("bert", "roberta", "xlm-roberta", "gpt2", "llama", "mistral", "qwen2", "qwen3")
#: the families with one word embedding (nn.Embedding) under their layout's embed role
WORD_EMBEDDINGS = (*TEXT, "clip", "whisper")


def _lora(**kw: Any) -> Callable[[str], Any]:
    def make(family: str) -> Any:
        targets = MODELS[family].lora_targets
        return ak.LoRA(**kw, **({"targets": targets} if targets else {}))
    return make


def _bottleneck(**kw: Any) -> Callable[[str], Any]:
    return _residual(ak.Bottleneck, **kw)


def _residual(cls: type, **kw: Any) -> Callable[[str], Any]:
    """A residual method at the layout's sublayers, or at ``bottleneck_targets`` (no layout)."""
    def make(family: str) -> Any:
        targets = MODELS[family].bottleneck_targets
        return cls(**kw, **({"targets": targets} if targets else {}))
    return make


METHOD_CASES: tuple[MethodCase, ...] = (
    MethodCase("lora-qv", _lora(r=4, alpha=8)),
    MethodCase("lora-all-linear-rslora", lambda f: ak.LoRA(
        r=4, alpha=8, use_rslora=True,
        targets=MODELS[f].lora_targets or ("all-linear",))),
    # an embedding delta reaches decoder logits through many layers: slower on the toy task
    MethodCase("lora-embed", lambda f: ak.LoRA(r=4, alpha=8, targets=MODELS[f].lora_targets or ("embed",)),
               train_ratio=0.9),
    MethodCase("lora-ffn-dropout", lambda f: ak.LoRA(
        r=2, alpha=4, dropout=0.1, targets=MODELS[f].lora_targets or ("ffn.in", "ffn.out"))),
    MethodCase("houlsby", _bottleneck(reduction=4, placement="both")),
    MethodCase("pfeiffer-ln", _bottleneck(reduction=4, placement="ffn", layer_norm=True,
                                          non_linearity="gelu")),
    MethodCase("parallel", _bottleneck(reduction=4, placement="both", mode="parallel",
                                       scaling=2.0)),
    MethodCase("adapterbias", _residual(ak.AdapterBias)),
    MethodCase("adapterbias-both", _residual(ak.AdapterBias, placement="both")),
    MethodCase("compacter", _residual(ak.Compacter, reduction=4, placement="both")),
    MethodCase("compacter-pp-unshared-r2", _residual(
        ak.Compacter, reduction=4, plus_plus=True, shared_rule=False, rank=2,
        non_linearity="relu")),
    MethodCase("ia3", lambda f: ak.IA3() if MODELS[f].lora_targets is None else ak.IA3(
        targets=MODELS[f].lora_targets, feedforward=MODELS[f].lora_targets[-1:])),
    MethodCase("ia3-q-out-ffn-in", lambda f: ak.IA3(
        targets=MODELS[f].lora_targets or ("attn.q", "attn.out", "ffn.in"),
        feedforward=(MODELS[f].lora_targets or ("ffn.in",))[:1])),
    MethodCase("dora-qv", lambda f: ak.DoRA(
        r=4, alpha=8, targets=MODELS[f].lora_targets or ("attn.q", "attn.v"))),
    MethodCase("dora-ffn-dropout-rslora", lambda f: ak.DoRA(
        r=2, alpha=4, dropout=0.05, use_rslora=True,
        targets=MODELS[f].lora_targets or ("ffn.in", "ffn.out"))),
    MethodCase("vera-qv", lambda f: ak.VeRA(
        r=8, targets=MODELS[f].lora_targets or ("attn.q", "attn.v"))),
    MethodCase("vera-all-linear-noproj", lambda f: ak.VeRA(
        r=4, d_initial=0.5, projection_prng_key=3, save_projection=False,
        targets=MODELS[f].lora_targets or ("all-linear",))),
    MethodCase("eigenlora-qv", lambda f: ak.EigenLoRA(basis=basis_for(f), k=4, r=2, alpha=4)),
    # the prompt and prefix start random (N(0, 1), as in PEFT): not the identity, and about 1 per
    # number away from the toy target (drawn at std 0.1), which Adam at lr 1e-2 covers only in
    # part in 30 steps
    MethodCase("prompt", lambda f: ak.PromptTuning(num_tokens=3), identity_at_init=False,
               families=TEXT, prepends=3, train_ratio=0.9),
    MethodCase("prompt-vocab", lambda f: ak.PromptTuning(num_tokens=2, init="vocab"),
               identity_at_init=False, families=TEXT, prepends=2, train_ratio=0.9),
    MethodCase("prefix", lambda f: ak.PrefixTuning(num_tokens=3), identity_at_init=False,
               families=TEXT, train_ratio=0.9),
    MethodCase("prefix-reparam", lambda f: ak.PrefixTuning(num_tokens=3, reparameterize=True,
                                                           hidden=8),
               identity_at_init=False, families=TEXT),
    MethodCase("shira-qv", lambda f: ak.SHiRA(
        r=2, random_seed=0, targets=MODELS[f].lora_targets or ("attn.q", "attn.v"))),
    MethodCase("shira-magnitude-all-linear", lambda f: ak.SHiRA(
        fraction=0.05, mask_type="magnitude", targets=MODELS[f].lora_targets or ("all-linear",))),
    # SparseAdapter's weights start N(0, 0.02^2), as in the paper's code: not the identity
    MethodCase("sparse-adapter-magnitude", _residual(
        ak.SparseAdapter, reduction=4, placement="both", sparsity=0.5, criterion="magnitude"),
        identity_at_init=False),
    MethodCase("sparse-adapter-random-layer-parallel", _residual(
        ak.SparseAdapter, reduction=4, mode="parallel", sparsity=0.8, criterion="random",
        scope="layer", seed=3), identity_at_init=False),
    MethodCase("invertible-nice", lambda f: ak.InvertibleAdapter(), families=WORD_EMBEDDINGS),
    MethodCase("invertible-glow-gelu", lambda f: ak.InvertibleAdapter(
        coupling="glow", reduction=4, non_linearity="gelu"), families=WORD_EMBEDDINGS),
    MethodCase("hydra", lambda f: ak.Hydra(
        r=4, alpha=8, targets=MODELS[f].lora_targets or ("attn.out", "ffn.out"))),
    MethodCase("hydra-qv-dropout-rseq", lambda f: ak.Hydra(
        r=2, r_sequential=4, alpha=4, dropout=0.1,
        targets=MODELS[f].lora_targets or ("attn.q", "attn.v"))),
    # DyLoRA trains at random ranks in [min_rank, r] while the toy target is drawn at the
    # inference rank: ranks far below it cannot reach it, so the ranges are kept narrow
    MethodCase("dylora-qv-r2", lambda f: ak.DyLoRA(
        r=2, alpha=4, targets=MODELS[f].lora_targets or ("attn.q", "attn.v"))),
    MethodCase("dylora-ffn-dropout-min2-rank3", lambda f: ak.DyLoRA(
        r=4, alpha=4, dropout=0.1, min_rank=2, rank=3,
        targets=MODELS[f].lora_targets or ("ffn.in", "ffn.out"))),
    MethodCase("lora-pissa-qv", _lora(r=4, alpha=8, init="pissa"), init_tol=1e-5),
    MethodCase("lora-pissa-niter-all-linear-rslora", lambda f: ak.LoRA(
        r=2, alpha=4, use_rslora=True, init="pissa_niter_2",
        targets=MODELS[f].lora_targets or ("all-linear",)), init_tol=1e-5),
    # method unions; the prefix starts random (N(0, 1)) as in the prefix rows
    MethodCase("union-lora-ia3", lambda f: ak.MethodUnion((
        ak.LoRA(r=4, alpha=8, targets=MODELS[f].lora_targets or ("attn.q", "attn.v")),
        ak.IA3(targets=MODELS[f].lora_targets or ("attn.k", "attn.v", "ffn.out"),
               feedforward=(MODELS[f].lora_targets or ("ffn.out",))[-1:])))),
    MethodCase("mam", lambda f: ak.MAM(num_tokens=3, reduction=4), identity_at_init=False,
               families=TEXT, train_ratio=0.9),
    MethodCase("unipelt-gated", lambda f: ak.UniPELT(r=4, alpha=8, num_tokens=3, reduction=4),
               identity_at_init=False, families=TEXT, train_ratio=0.9),
    # one task: no task ids needed (tests/test_poly_hyper.py covers several, and the sampled
    # routing of training, whose noise would swamp this table's toy losses)
    MethodCase("poly-mhr", lambda f: ak.Poly(
        n_skills=3, n_splits=2, r=2, alpha=4, sample=False,
        targets=MODELS[f].lora_targets or ("attn.q", "attn.v"))),
    MethodCase("poly-one-skill-no-sample", lambda f: ak.Poly(
        n_skills=1, r=4, alpha=8, sample=False,
        targets=MODELS[f].lora_targets or ("attn.k", "ffn.out"))),
    MethodCase("hyper-lora", lambda f: ak.HyperAdapter(
        task_dim=8, hidden=16, r=2, targets=MODELS[f].lora_targets)),
    MethodCase("hyper-bottleneck", lambda f: ak.HyperAdapter(
        task_dim=8, hidden=16, adapter="bottleneck", reduction=4, placement="both",
        targets=MODELS[f].bottleneck_targets)),
)
