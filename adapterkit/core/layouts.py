"""Where things are in each architecture family: one small data table per family.

A role pattern is a regular expression for a module path *relative to one layer*; a layer pattern
matches the layer containers. Paths may carry any prefix (``bert.``, ``model.``, ...), so the same
table serves base models and models with heads. Several alternatives per role cover the module
names of different transformers versions (ViT renamed its attention projections, for example).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

#: Per-layer roles that a target may name.
LAYER_ROLES = (
    "attn.q", "attn.k", "attn.v", "attn.out",
    "xattn.q", "xattn.k", "xattn.v", "xattn.out",
    "ffn.in", "ffn.up", "ffn.gate", "ffn.out",
    "attn.norm", "ffn.norm",  # post-LN families: the LayerNorm after each sublayer's residual
)
#: Roles outside the layers.
GLOBAL_ROLES = ("embed",)
#: Roles that expand to several modules.
SPECIAL_ROLES = ("all-linear",)
ROLES = LAYER_ROLES + GLOBAL_ROLES + SPECIAL_ROLES
_ROLE_SHAPE = re.compile(r"(attn|xattn|ffn|embed)(\.[A-Za-z_]+)?|all-linear|all_linear")


def looks_like_role(target: str) -> bool:
    return _ROLE_SHAPE.fullmatch(target) is not None


@dataclass(frozen=True)
class Layout:
    """Role table of one architecture family."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    roles: Mapping[str, str]
    embed: str
    notes: str = ""

    @cached_property
    def layer_re(self) -> re.Pattern[str]:
        return re.compile(rf"^((?:.*\.)?(?:{self.layers}))\.")

    def role_re(self, role: str) -> re.Pattern[str] | None:
        if role == "embed":
            return re.compile(rf"^(?:.*\.)?(?:{self.embed})$")
        suffix = self.roles.get(role)
        if suffix is None:
            return None
        return re.compile(rf"^(?:.*\.)?(?:{self.layers})\.(?:{suffix})$")

    def layer_of(self, path: str) -> str | None:
        m = self.layer_re.match(path)
        return m.group(1) if m else None


_BERT_ROLES = {
    "attn.q": r"attention\.self\.query",
    "attn.k": r"attention\.self\.key",
    "attn.v": r"attention\.self\.value",
    "attn.out": r"attention\.output\.dense",
    "ffn.in": r"intermediate\.dense",
    "ffn.up": r"intermediate\.dense",
    "ffn.out": r"output\.dense",
    "attn.norm": r"attention\.output\.LayerNorm",
    "ffn.norm": r"output\.LayerNorm",
}
_LLAMA_ROLES = {
    "attn.q": r"self_attn\.q_proj",
    "attn.k": r"self_attn\.k_proj",
    "attn.v": r"self_attn\.v_proj",
    "attn.out": r"self_attn\.o_proj",
    "ffn.in": r"mlp\.(?:gate_proj|up_proj)",
    "ffn.up": r"mlp\.up_proj",
    "ffn.gate": r"mlp\.gate_proj",
    "ffn.out": r"mlp\.down_proj",
}
_CLIP_ROLES = {
    "attn.q": r"self_attn\.q_proj",
    "attn.k": r"self_attn\.k_proj",
    "attn.v": r"self_attn\.v_proj",
    "attn.out": r"self_attn\.out_proj",
    "ffn.in": r"mlp\.fc1",
    "ffn.up": r"mlp\.fc1",
    "ffn.out": r"mlp\.fc2",
}

LAYOUTS: tuple[Layout, ...] = (
    Layout("bert", ("bert",), r"encoder\.layer\.\d+", _BERT_ROLES, r"embeddings\.word_embeddings"),
    Layout("roberta", ("roberta",), r"encoder\.layer\.\d+", _BERT_ROLES,
           r"embeddings\.word_embeddings"),
    Layout("xlm-roberta", ("xlm-roberta",), r"encoder\.layer\.\d+", _BERT_ROLES,
           r"embeddings\.word_embeddings"),
    Layout(
        "gpt2", ("gpt2",), r"h\.\d+",
        {
            "attn.q": r"attn\.c_attn", "attn.k": r"attn\.c_attn", "attn.v": r"attn\.c_attn",
            "attn.out": r"attn\.c_proj", "ffn.in": r"mlp\.c_fc", "ffn.up": r"mlp\.c_fc",
            "ffn.out": r"mlp\.c_proj",
        },
        r"wte",
        notes="q, k and v share the fused c_attn projection",
    ),
    Layout("llama", ("llama", "mistral", "qwen2", "qwen3"), r"layers\.\d+", _LLAMA_ROLES,
           r"embed_tokens"),
    Layout(
        "vit", ("vit",), r"(?:encoder\.layer|layers)\.\d+",
        {
            "attn.q": r"attention\.(?:attention\.query|q_proj)",
            "attn.k": r"attention\.(?:attention\.key|k_proj)",
            "attn.v": r"attention\.(?:attention\.value|v_proj)",
            "attn.out": r"attention\.(?:output\.dense|o_proj)",
            "ffn.in": r"(?:intermediate\.dense|mlp\.fc1)",
            "ffn.up": r"(?:intermediate\.dense|mlp\.fc1)",
            "ffn.out": r"(?:output\.dense|mlp\.fc2)",
        },
        r"embeddings\.patch_embeddings\.projection",
    ),
    Layout("clip", ("clip", "clip_text_model", "clip_vision_model"), r"encoder\.layers\.\d+",
           _CLIP_ROLES, r"(?:token_embedding|patch_embedding)",
           notes="text and vision towers both match"),
    Layout(
        "whisper", ("whisper",), r"(?:encoder|decoder)\.layers\.\d+",
        {
            **{k: v.replace("mlp\\.fc", "fc") for k, v in _CLIP_ROLES.items()},
            "xattn.q": r"encoder_attn\.q_proj", "xattn.k": r"encoder_attn\.k_proj",
            "xattn.v": r"encoder_attn\.v_proj", "xattn.out": r"encoder_attn\.out_proj",
        },
        r"decoder\.embed_tokens",
        notes="encoder and decoder layers both match; cross-attention is xattn.*",
    ),
)


def layout_for(model_type: str | None) -> Layout | None:
    """The layout whose family covers ``model_type``, or None."""
    if model_type is None:
        return None
    for layout in LAYOUTS:
        if model_type in layout.model_types:
            return layout
    return None


def get_layout(family: str) -> Layout:
    for layout in LAYOUTS:
        if layout.family == family:
            return layout
    from ..errors import TargetError

    raise TargetError(f"unknown layout {family!r}; known: {[lay.family for lay in LAYOUTS]}")
