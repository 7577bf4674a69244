"""``model.apply(fn)``, torch's walk over every submodule, reaches adapter modules like any other
module and leaves the adapted model's outputs as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.core.base import AdapterModule

from .cases import METHOD_CASES
from .helpers import perturb
from .models import build, inputs_for, run

FAMILY = "bert"
CASES = [pytest.param(c, id=c.id) for c in METHOD_CASES if c.families is None or FAMILY in c.families]


@pytest.mark.parametrize("case", CASES)
def test_model_apply_visits_adapter_modules(case) -> None:
    model = build(FAMILY)
    x = inputs_for(FAMILY)
    kit = ak.AdapterKit(model)
    kit.add("a", case.make(FAMILY))
    perturb(kit, "a")
    kit.activate("a")
    want = run(model, FAMILY, x)
    seen: list[nn.Module] = []
    assert model.apply(seen.append) is model
    adapters = {id(m) for m in model.modules() if isinstance(m, AdapterModule)}
    assert adapters and adapters <= {id(m) for m in seen}
    assert torch.equal(run(model, FAMILY, x), want)


def test_model_apply_reinitialises_adapter_parameters() -> None:
    model = build(FAMILY)
    kit = ak.AdapterKit(model)
    kit.add("a", ak.LoRA(r=4))
    perturb(kit, "a")

    def zero_lora(module: nn.Module) -> None:
        if isinstance(module, AdapterModule):
            for p in module.parameters(recurse=False):
                nn.init.zeros_(p)

    model.apply(zero_lora)
    assert all(not bool(p.any()) for p in kit.parameters("a"))
