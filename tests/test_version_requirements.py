"""Features that need a newer transformers than the installed one say so by name, with both
versions, and leave the model as it was; others are unaffected."""

from __future__ import annotations

import pytest

import adapterkit as ak
from adapterkit.core import requires
from adapterkit.methods.inputs import MIN_TRANSFORMERS

from .helpers import kit_snapshot
from .models import build


@pytest.fixture
def old_transformers(monkeypatch):
    real = requires.installed_version

    def fake(package: str) -> str | None:
        return "4.57.6" if package == "transformers" else real(package)

    monkeypatch.setattr(requires, "installed_version", fake)


@pytest.mark.parametrize("config", [ak.PromptTuning(num_tokens=2), ak.PrefixTuning(num_tokens=2),
                                    ak.MAM(num_tokens=2, reduction=4)],
                         ids=["prompt", "prefix", "mam"])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_input_methods_name_the_needed_and_installed_version(old_transformers, family: str,
                                                               config) -> None:
    model = build(family)
    kit = ak.AdapterKit(model)
    before = kit_snapshot(model, kit)
    with pytest.raises(ak.AdapterError, match=(
            rf"needs transformers>={MIN_TRANSFORMERS} \(.*Cache.*\); transformers 4\.57\.6 is "
            rf"installed: pip install 'transformers>={MIN_TRANSFORMERS}'")) as err:
        kit.add("a", config)
    assert ("PromptTuning" in str(err.value)) or ("PrefixTuning" in str(err.value))
    assert kit_snapshot(model, kit) == before


def test_other_methods_do_not_ask(old_transformers) -> None:
    kit = ak.AdapterKit(build("llama"))
    kit.add("l", ak.LoRA(r=2))
    kit.add("b", ak.Bottleneck(reduction=4))
    assert kit.names == ["l", "b"]


def test_the_installed_floor_passes_and_a_missing_package_is_named(monkeypatch) -> None:
    monkeypatch.setattr(requires, "installed_version", lambda package: MIN_TRANSFORMERS)
    ak.AdapterKit(build("gpt2")).add("p", ak.PromptTuning(num_tokens=2))
    monkeypatch.setattr(requires, "installed_version", lambda package: None)
    with pytest.raises(ak.AdapterError, match=r"PrefixTuning needs transformers>=.*which is not "
                                              r"installed"):
        ak.AdapterKit(build("gpt2")).add("p", ak.PrefixTuning(num_tokens=2))


@pytest.mark.parametrize(("version", "parts"), [("5.0", (5, 0, 0)), ("5.0.0.dev0", (5, 0, 0)),
                                                ("4.57.6", (4, 57, 6)), ("5.10.1+cpu", (5, 10, 1)),
                                                ("2.13.0.1", (2, 13, 0, 1))])
def test_release_parts(version: str, parts: tuple[int, ...]) -> None:
    assert requires.release(version) == parts


def test_release_order() -> None:
    assert requires.release("4.57.6") < requires.release("5.0") <= requires.release("5.0.0")
    assert requires.release("5.9.0") < requires.release("5.10.0")
    assert requires.installed_version("adapterkit_no_such_package") is None
