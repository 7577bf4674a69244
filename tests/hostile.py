"""Checkpoints to damage and models to load them into, for the hostile-file property tests.

Each format keeps one pristine checkpoint directory and one target model, reused by every
example: a refused load must leave the target as it was (checked each time), and a load that
succeeds is checked, removed and its trained head restored.
"""

from __future__ import annotations

import faulthandler
import json
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers as T
from safetensors.torch import load_file, save_file
from torch import nn

import adapterkit as ak
from adapterkit.io.kitio import adapter_tensors

from .helpers import hook_counts, perturb
from .models import build

FIX = Path(__file__).parent / "fixtures" / "adapterhub"
#: a load slower than this is a hang (the property tests' own deadline is shorter)
HANG_S = 60


def adapterhub_base() -> nn.Module:
    cfg = T.BertConfig.from_dict(json.loads((FIX / "base_config.json").read_text()))
    return T.BertModel(cfg).eval()


@dataclass
class Target:
    """A model to load damaged copies of one checkpoint into."""

    model: nn.Module
    kit: ak.AdapterKit
    weights: str  # the weights file's name in the checkpoint directory
    pristine: Path
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    hooks: dict[str, tuple[int, int]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.hooks = hook_counts(self.model)
        name = self.kit.load(self.pristine)
        self.shapes = {k: tuple(t.shape) for k, t in
                       adapter_tensors(self.kit, self.kit.record(name)).items()}
        self.restore(name)

    def restore(self, name: str) -> None:
        self.kit.remove(name)
        self.model.load_state_dict(self.state)

    def unchanged(self) -> bool:
        now = self.model.state_dict()
        return (self.kit.names == [] and now.keys() == self.state.keys()
                and all(torch.equal(now[k], v) for k, v in self.state.items())
                and hook_counts(self.model) == self.hooks)


def _bert_kit(config: Any, head: bool) -> ak.AdapterKit:
    kit = ak.AdapterKit(build("bert"))
    kit.add("x", config)
    perturb(kit, "x")
    if head:
        kit.train("x", train_also=("classifier",))
    return kit


def make_targets(root: Path) -> dict[str, Target]:
    """One pristine checkpoint and target per format: native, PEFT (LoRA, IA3, prompt tuning)
    and AdapterHub (LoRA, and a Pfeiffer bottleneck rewritten as safetensors)."""
    saved = {
        "native": (_bert_kit(ak.LoRA(r=4), True), "adapterkit"),
        "peft": (_bert_kit(ak.LoRA(r=4), True), "peft"),
        "peft-ia3": (_bert_kit(ak.IA3(), False), "peft"),
        "peft-prompt": (_bert_kit(ak.PromptTuning(num_tokens=3), True), "peft"),
    }
    for fmt, (kit, how) in saved.items():
        kit.save("x", root / fmt, format=how)
    shutil.copytree(FIX / "lora_safetensors", root / "adapterhub")
    bn = root / "adapterhub-bn"
    bn.mkdir()
    shutil.copy(FIX / "seq_bn" / "adapter_config.json", bn)
    bin_state = torch.load(FIX / "seq_bn" / "pytorch_adapter.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in bin_state.items()}, bn / "adapter.safetensors")
    targets = {}
    for fmt in ("native", "peft", "peft-ia3", "peft-prompt", "adapterhub", "adapterhub-bn"):
        model = adapterhub_base() if fmt.startswith("adapterhub") else build("bert")
        weights = "adapter_model.safetensors" if fmt.startswith("peft") else "adapter.safetensors"
        targets[fmt] = Target(model, ak.AdapterKit(model), weights, root / fmt)
    return targets


@contextmanager
def hang_guard(seconds: int = HANG_S) -> Iterator[None]:
    """End the test process with every thread's traceback when a load has not returned within
    ``seconds``: a failure instead of a stuck test run, even inside C code (a regex match)."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def load_damaged(target: Target, directory: Path, must_fail: bool = False) -> str:
    """Load ``directory`` into ``target``: a refusal must be LoadError or ConfigError naming a file
    of ``directory`` and leave the model as it was; a success must give every tensor the
    reference shape, finite values and (native) the file's values. 'refused' or 'loaded'."""
    try:
        with hang_guard():
            name = target.kit.load(directory)
    except (ak.LoadError, ak.ConfigError) as exc:
        text = str(exc)
        files = [str(directory / f.name) for f in directory.iterdir()]
        assert any(f in text for f in files), f"the message names no file of {directory}: {text}"
        assert len(text) > max(len(f) for f in files) + 10, f"the message names no problem: {text}"
        assert target.unchanged(), f"a refused load changed the model: {text}"
        return "refused"
    assert not must_fail, f"{directory} loaded as {name!r}"
    try:
        _check_loaded(target, directory, name)
    finally:
        target.restore(name)
    return "loaded"


def _check_loaded(target: Target, directory: Path, name: str) -> None:
    got = adapter_tensors(target.kit, target.kit.record(name))
    assert {k: tuple(t.shape) for k, t in got.items()} == target.shapes
    assert all(bool(torch.isfinite(t).all()) for t in got.values() if t.is_floating_point())
    if target.pristine.name == "native":  # file keys are the adapter's own
        reference = load_file(directory / target.weights)  # the safetensors library's own reader
        for key, t in got.items():
            assert torch.equal(t, reference[key].to(t.dtype)), key


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, data section) of a safetensors file."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: Any, body: bytes, raw: bytes | None = None) -> bytes:
    """A safetensors file of ``header`` (or the header text ``raw``) and data ``body``."""
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def write_case(target: Target, root: Path, weights: bytes | None = None,
               config: bytes | None = None) -> Path:
    """A copy of the target's pristine checkpoint in ``root`` with the given file contents."""
    d = root / "case"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(target.pristine, d)
    if weights is not None:
        (d / target.weights).write_bytes(weights)
    if config is not None:
        (d / "adapter_config.json").write_bytes(config)
    return d

