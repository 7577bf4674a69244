"""The one resolver from an adapter source to a local directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterkit.errors import LoadError
from adapterkit.io import resolve as res


def test_a_directory_resolves_to_itself(tmp_path: Path) -> None:
    assert res.resolve(tmp_path) == tmp_path
    assert res.resolve(str(tmp_path)) == tmp_path


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "f.json").write_text("{}") and d / "f.json", "is a file"),
])
def test_a_bad_path_names_itself_and_what_is_allowed(tmp_path: Path, make, says: str) -> None:
    path = make(tmp_path)
    with pytest.raises(LoadError, match=says) as info:
        res.resolve(path)
    assert str(path) in str(info.value) and "adapter_config.json" in str(info.value)


def test_an_unknown_scheme_is_refused_with_the_known_ones(monkeypatch) -> None:
    monkeypatch.setattr(res, "_SCHEMES", {"demo": lambda rest: Path(rest)})
    with pytest.raises(LoadError, match=r"unknown source scheme 'nope'.*demo://"):
        res.resolve("nope://x/y")


def test_a_registered_scheme_gets_the_rest_and_the_options(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(res, "_SCHEMES", {})
    seen = {}

    def resolver(rest: str, **options) -> Path:
        seen.update(rest=rest, **options)
        return tmp_path

    res.register_scheme("demo", resolver)
    assert res.resolve("demo://org/name@v1", token="t") == tmp_path
    assert seen == {"rest": "org/name@v1", "token": "t"}
    assert res.schemes() == ["demo"]


def test_options_on_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="apply to URL sources only"):
        res.resolve(tmp_path, token="t")


def test_a_source_of_another_type_is_refused() -> None:
    with pytest.raises(LoadError, match="directory or a URL string, got int"):
        res.resolve(3)  # type: ignore[arg-type]
