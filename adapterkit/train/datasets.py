"""Local data files through ``datasets``: JSONL, JSON, CSV, TSV and parquet, as rows of dicts,
and the classification/regression tables (``--text-columns``, ``--label-column``, the GLUE files
of SST-2, RTE, MRPC and STS-B)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


class DataError(AdapterError, ValueError):
    """A data file is missing, malformed, or lacks what the task needs."""


def _check_jsonl(path: Path) -> None:
    """Every non-empty line must be a JSON object: the first bad line is named."""
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object, "
                                f"got {type(value).__name__}: {line.strip()[:80]!r}")


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a local JSONL/JSON, CSV, TSV or parquet file, read through ``datasets``.
    TSV files are read without quoting (as GLUE's) and a UTF-8 byte-order mark is dropped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: unknown data format {p.suffix!r}; use one of {sorted(FORMATS)}")
    try:
        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar
    except ImportError:
        raise DataError("reading data files needs the package datasets "
                        "(pip install 'adapterkit[train]')") from None
    disable_progress_bar()
    if kind == "json" and p.suffix.lower() == ".jsonl":
        _check_jsonl(p)
    try:
        if kind == "json":
            ds = Dataset.from_json(str(p))
        elif kind == "parquet":
            ds = Dataset.from_parquet(str(p))
        else:
            extra = {"sep": "\t", "quoting": 3} if kind == "tsv" else {}
            ds = Dataset.from_csv(str(p), encoding="utf-8-sig", keep_default_na=False, **extra)
    except Exception as exc:  # datasets wraps parser errors in several types
        raise DataError(f"{p}: cannot read it as {kind}: {exc}") from None
    rows = ds.to_list() if limit is None else ds.select(range(min(limit, len(ds)))).to_list()
    return [{str(k).lstrip("\ufeff"): v for k, v in row.items()} for row in rows]


def field(row: dict[str, Any], name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``row[name]``, checked to be present and of ``kind``; the error names ``where``."""
    if name not in row or row[name] is None:
        raise DataError(f"{where}: no field {name!r}; fields there: {sorted(row)}")
    value = row[name]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} must be a {names}, got {type(value).__name__}")
    return value


# -- classification and regression tables ------------------------------------------------------
@dataclass(frozen=True)
class TableExample:
    texts: tuple[str, ...]
    label: Any  # class index (int) or target value (float)


@dataclass(frozen=True)
class Table:
    """A classification (``labels`` names the classes) or regression (``labels`` empty) task."""

    name: str
    train: list[TableExample]
    dev: list[TableExample]
    labels: tuple[str, ...]
    metric_names: tuple[str, ...]

    @property
    def regression(self) -> bool:
        return not self.labels


@dataclass(frozen=True)
class TableSpec:
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None  # None: found in the training file; (): regression
    metrics: tuple[str, ...] = ()  # (): by the task (see ``default_metrics``)


GLUE_TABLES = {
    "sst2": TableSpec(("sentence",), "label", ("0", "1"), ("accuracy",)),
    "rte": TableSpec(("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
                     ("accuracy",)),
    "mrpc": TableSpec(("#1 String", "#2 String"), "Quality", ("0", "1"), ("accuracy", "f1")),
    "stsb": TableSpec(("sentence1", "sentence2"), "score", (), ("pearson", "spearman")),
}


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _examples(rows: Sequence[dict[str, Any]], spec: TableSpec, labels: tuple[str, ...],
              where: str) -> list[TableExample]:
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for i, row in enumerate(rows):
        at = f"{where} row {i + 1}"
        texts = tuple(str(field(row, c, at, (str, int, float))) for c in spec.text_columns)
        raw = field(row, spec.label_column, at, (str, int, float))
        if not labels:
            try:
                out.append(TableExample(texts, float(raw)))
            except ValueError:
                raise DataError(f"{at}: regression target {raw!r} is not a number") from None
            continue
        label = _label_text(raw)
        if label not in index:
            raise DataError(f"{at}: label {label!r} is not one of the task's labels {list(labels)}")
        out.append(TableExample(texts, index[label]))
    return out


def read_table(train: str | os.PathLike, dev: str | os.PathLike | None, spec: TableSpec,
               name: str | None = None, regression: bool = False,
               limit: int | None = None) -> Table:
    """A task from a training file and a dev file (any format of :func:`read_rows`). Labels
    not given by ``spec`` are the sorted distinct values of the training file's label column;
    ``regression`` reads float targets. Without ``dev``, the last 10% of ``train`` is held out."""
    rows = read_rows(train)
    if not rows:
        raise DataError(f"{train}: no rows")
    missing = [c for c in (*spec.text_columns, spec.label_column) if c not in rows[0]]
    if missing:
        raise DataError(f"{train}: no column(s) {missing}; columns: {sorted(rows[0])} "
                        "(choose them with --text-columns and --label-column)")
    labels = () if regression else spec.labels
    if labels is None:
        labels = tuple(sorted({_label_text(r[spec.label_column]) for r in rows}))
    if dev is None:
        cut = max(1, len(rows) // 10)
        rows, dev_rows = rows[:-cut], rows[-cut:]
    else:
        dev_rows = read_rows(dev, limit)
    metrics = spec.metrics or default_metrics(len(labels))
    return Table(name or Path(train).parent.name or Path(train).stem,
                 _examples(rows, spec, labels, str(train)),
                 _examples(dev_rows[:limit] if limit else dev_rows, spec, labels, str(dev or train)),
                 labels, metrics)


def default_metrics(num_labels: int) -> tuple[str, ...]:
    """Regression (0 labels): Pearson and Spearman; two classes: accuracy, F1 of class 1 and
    MCC; more: accuracy, macro F1 and MCC."""
    if num_labels == 0:
        return ("pearson", "spearman")
    return ("accuracy", "f1", "mcc") if num_labels == 2 else ("accuracy", "macro_f1", "mcc")


def glue_table(task: str, directory: Path, limit: int | None = None) -> Table:
    """SST-2, RTE, MRPC or STS-B from a GLUE directory holding ``<task>/train.tsv`` and
    ``dev.tsv``."""
    spec = GLUE_TABLES[task]
    return read_table(directory / task / "train.tsv", directory / task / "dev.tsv", spec, task,
                      regression=spec.labels == (), limit=limit)
