"""GLUE-style TSV tasks: SST-2, RTE, or any TSV with a ``label`` column."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    """A classification task read from ``train.tsv`` / ``dev.tsv`` in one directory."""

    name: str
    directory: Path
    text_fields: tuple[str, ...]
    labels: tuple[str, ...]
    label_field: str = "label"

    def split(self, split: str, limit: int | None = None) -> list[Example]:
        path = self.directory / f"{split}.tsv"
        if not path.is_file():
            raise AdapterError(f"task {self.name!r} has no {split} split: {path} is missing")
        index = {lab: i for i, lab in enumerate(self.labels)}
        out = []
        for row in _rows(path):
            label = row.get(self.label_field, "").strip()
            if label not in index:
                raise AdapterError(f"{path}: label {label!r} is not one of {list(self.labels)}")
            out.append(Example(tuple(row[f] for f in self.text_fields), index[label]))
            if limit is not None and len(out) >= limit:
                break
        return out


_GLUE = {
    "sst2": (("sentence",), ("0", "1")),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment")),
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def glue_dir() -> Path:
    """``$ADAPTERKIT_GLUE``, else the first ``shared/data/glue`` above the working directory."""
    env = os.environ.get("ADAPTERKIT_GLUE")
    if env:
        return Path(env)
    for base in (Path.cwd(), *Path.cwd().parents):
        for candidate in (base / "shared" / "data" / "glue", base.parent / "shared" / "data" / "glue"):
            if candidate.is_dir():
                return candidate
    raise AdapterError(
        "cannot find the GLUE data: set ADAPTERKIT_GLUE to a directory holding sst2/ and rte/"
    )


def _tsv_task(path: Path) -> Task:
    directory = path.parent if path.is_file() else path
    train = directory / "train.tsv"
    if not train.is_file():
        raise AdapterError(f"{path}: expected a train.tsv (and dev.tsv) there")
    rows = _rows(train)
    if not rows or "label" not in rows[0]:
        raise AdapterError(f"{train} needs a header row with a 'label' column")
    fields = tuple(k for k in rows[0] if k not in ("label", "index", "idx", "id"))
    labels = tuple(sorted({r["label"].strip() for r in rows}))
    return Task(directory.name, directory, fields, labels)


def get_task(name_or_path: str) -> Task:
    """``sst2``, ``rte`` or a path to a directory (or its train.tsv) of a TSV task."""
    if name_or_path in _GLUE:
        fields, labels = _GLUE[name_or_path]
        return Task(name_or_path, glue_dir() / name_or_path, fields, labels)
    path = Path(name_or_path)
    if path.exists():
        return _tsv_task(path)
    raise AdapterError(f"unknown task {name_or_path!r}: use {sorted(_GLUE)} or a TSV directory")
