"""Loading checks an adapter's size on a meta copy of the model; loading many adapters copies the
module tree once, and a changed base structure gets a new copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

import adapterkit as ak
from adapterkit.io import kitio

from .models import build


def test_meta_twin_is_made_once_and_still_refuses_oversized_configs(tmp_path: Path) -> None:
    model = build("llama")
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=2))
    kit.save("a", tmp_path / "a")
    kit.load(tmp_path / "a", name="b")
    twin = kitio._TWINS[model][1]
    assert twin is not None and twin.model is not model
    kit.load(tmp_path / "a", name="c")  # one more adapter attached: the same copy
    assert kitio._TWINS[model][1] is twin
    path = tmp_path / "a" / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["config"]["r"] = 2**22  # far more values than the weights file holds
    path.write_text(json.dumps(meta))
    with pytest.raises(ak.LoadError, match="more than the"):
        kit.load(tmp_path / "a", name="d")
    assert "d" not in kit.names
    head = model.lm_head
    model.lm_head = nn.Linear(head.in_features, head.out_features + 1, bias=False)
    with pytest.raises(ak.LoadError):
        kit.load(tmp_path / "a", name="e")
    assert kitio._TWINS[model][1] is not twin  # another structure: copied again
