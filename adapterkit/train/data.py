"""GLUE-style TSV tasks: SST-2, RTE, or any TSV with a ``label`` column.

SST-2 and RTE are read from the full GLUE files (``$ADAPTERKIT_GLUE``, else a
``shared/data/glue`` beside or above the working directory or the checkout). Without them,
SST-2 falls back to the data shipped in ``glue_data/sst2/``: a seeded random slice of the train
split and the whole dev split (see ``glue_data/README.md``). Splits are ``<split>.tsv`` or
``<split>.tsv.gz``.
"""

from __future__ import annotations

import csv
import gzip
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
    #: True for the data shipped with adapterkit (a slice of the train split), False for the
    #: full files
    shipped: bool = False

    def path(self, split: str) -> Path:
        """The file of ``split``: ``<split>.tsv`` or, failing that, ``<split>.tsv.gz``."""
        found = _split_file(self.directory, split)
        if found is None:
            raise AdapterError(f"task {self.name!r} has no {split} split: neither {split}.tsv nor "
                               f"{split}.tsv.gz is in {self.directory}")
        return found

    def split(self, split: str, limit: int | None = None) -> list[Example]:
        path = self.path(split)
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


#: the GLUE data shipped with the package (SST-2 only), see glue_data/README.md
SHIPPED = Path(__file__).resolve().with_name("glue_data")


def _split_file(directory: Path, split: str) -> Path | None:
    for name in (f"{split}.tsv", f"{split}.tsv.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _rows(path: Path) -> list[dict[str, str]]:
    """The rows of a TSV file with a header, plain or gzip-compressed (by the ``.gz`` suffix)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _search_roots() -> list[Path]:
    """The working directory and the checkout (the folder above the package), each with the
    folders above it: where a ``shared/data/glue`` is looked for, nearest first."""
    roots: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parents[2]):
        roots += [p for p in (start, *start.parents) if p not in roots]
    return roots


def find_glue_dir() -> Path | None:
    """``$ADAPTERKIT_GLUE``, else the first ``shared/data/glue`` in :func:`_search_roots`;
    None when there is neither."""
    env = os.environ.get("ADAPTERKIT_GLUE")
    if env:
        return Path(env)
    for base in _search_roots():
        candidate = base / "shared" / "data" / "glue"
        if candidate.is_dir():
            return candidate
    return None


def _not_found(detail: str = "") -> AdapterError:
    return AdapterError(
        f"cannot find the GLUE data{detail}: set ADAPTERKIT_GLUE to a directory holding sst2/ "
        "and rte/, or put shared/data/glue beside the checkout (searched from "
        f"{Path.cwd()} and {Path(__file__).resolve().parents[2]} upwards)")


def glue_dir() -> Path:
    """The full GLUE data (:func:`find_glue_dir`); AdapterError when there is none."""
    found = find_glue_dir()
    if found is None:
        raise _not_found()
    return found


def glue_task_dir(name: str) -> tuple[Path, bool]:
    """(directory of GLUE task ``name``, whether it is the shipped data): the full data when
    :func:`find_glue_dir` finds it, else the shipped copy where adapterkit has one."""
    found = find_glue_dir()
    if found is not None:
        return found / name, False
    if (SHIPPED / name).is_dir():
        return SHIPPED / name, True
    shipped = sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()) if SHIPPED.is_dir() else []
    raise _not_found(f" for {name!r} (adapterkit ships only {shipped})")


def _tsv_task(path: Path) -> Task:
    directory = path.parent if path.is_file() else path
    train = _split_file(directory, "train")
    if train is None:
        raise AdapterError(f"{path}: expected a train.tsv or train.tsv.gz (and dev split) there")
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
        directory, shipped = glue_task_dir(name_or_path)
        return Task(name_or_path, directory, fields, labels, shipped=shipped)
    path = Path(name_or_path)
    if path.exists():
        return _tsv_task(path)
    raise AdapterError(f"unknown task {name_or_path!r}: use {sorted(_GLUE)} or a TSV directory")
