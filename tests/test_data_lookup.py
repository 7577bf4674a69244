"""Where the GLUE tasks are read from: $ADAPTERKIT_GLUE, a shared/data/glue beside or above the
checkout, else the SST-2 data shipped in the package; plain and gzip-compressed TSV files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

import adapterkit as ak
from adapterkit.train import data

ROOT = Path(__file__).resolve().parents[1]
FULL_SST2 = ROOT.parent / "shared" / "data" / "glue" / "sst2"
ROWS = "sentence\tlabel\na \"quoted\" film ' \t1\nflat , dull\t0\n"


def _task_dir(base: Path, name: str = "sst2", gz: bool = False) -> Path:
    d = base / name
    d.mkdir(parents=True)
    for split in ("train", "dev"):
        if gz:
            with gzip.open(d / f"{split}.tsv.gz", "wt", encoding="utf-8", newline="") as f:
                f.write(ROWS)
        else:
            (d / f"{split}.tsv").write_text(ROWS, encoding="utf-8")
    return d


@pytest.fixture
def nowhere(monkeypatch, tmp_path):
    """No $ADAPTERKIT_GLUE and no shared/ anywhere the lookup searches."""
    monkeypatch.delenv("ADAPTERKIT_GLUE", raising=False)
    monkeypatch.setattr(data, "_search_roots", lambda: [tmp_path / "empty", tmp_path])
    return tmp_path


def test_environment_variable_comes_first(nowhere, monkeypatch) -> None:
    env = nowhere / "env"
    _task_dir(env / "glue")
    _task_dir(nowhere / "shared" / "data" / "glue")  # also present, but found later
    monkeypatch.setenv("ADAPTERKIT_GLUE", str(env / "glue"))
    task = data.get_task("sst2")
    assert (task.directory, task.shipped) == (env / "glue" / "sst2", False)


def test_shared_beside_or_above_is_found_before_the_shipped_data(nowhere) -> None:
    shared = nowhere / "shared" / "data" / "glue"
    _task_dir(shared)
    task = data.get_task("sst2")
    assert (task.directory, task.shipped) == (shared / "sst2", False)
    assert [ex.label for ex in task.split("train")] == [1, 0]


def test_search_roots_are_the_working_directory_and_the_checkout_upwards(monkeypatch,
                                                                          tmp_path) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    roots = data._search_roots()
    assert roots[:3] == [work, work.parent, tmp_path]
    checkout = Path(data.__file__).resolve().parents[2]
    assert checkout in roots and checkout.parent in roots
    assert len(roots) == len(set(roots))


def test_without_full_data_sst2_comes_from_the_package(nowhere) -> None:
    task = data.get_task("sst2")
    assert task.shipped and task.directory == data.SHIPPED / "sst2"
    assert task.path("train").name == "train.tsv.gz"
    train, dev = task.split("train"), task.split("dev")
    assert (len(train), len(dev)) == (12_800, 872)  # the demo's 400 x 32, the whole dev split
    assert {ex.label for ex in train} == {ex.label for ex in dev} == {0, 1}
    assert all(ex.texts[0].strip() for ex in train + dev)


def test_a_task_not_shipped_names_what_to_set(nowhere) -> None:
    with pytest.raises(ak.AdapterError, match=r"GLUE data for 'rte' \(adapterkit ships only "
                                              r"\['sst2'\]\): set ADAPTERKIT_GLUE"):
        data.get_task("rte")
    with pytest.raises(ak.AdapterError, match="cannot find the GLUE data: set ADAPTERKIT_GLUE"):
        data.glue_dir()


def test_gzip_and_plain_files_read_the_same(tmp_path) -> None:
    plain = data.get_task(str(_task_dir(tmp_path / "plain", "mine")))
    packed = data.get_task(str(_task_dir(tmp_path / "packed", "mine", gz=True)))
    assert packed.path("dev").suffix == ".gz"
    assert packed.split("train") == plain.split("train")
    assert plain.split("dev")[0].texts == ('a "quoted" film \' ',)


def test_a_missing_split_names_both_file_names(tmp_path) -> None:
    d = _task_dir(tmp_path, "mine")
    (d / "dev.tsv").unlink()
    with pytest.raises(ak.AdapterError, match=r"no dev split: neither dev.tsv nor dev.tsv.gz"):
        data.get_task(str(d)).split("dev")


def test_shipped_files_regenerate_byte_identically() -> None:
    """scripts/make_sst2_slice.py --check rebuilds both files from the full split in memory."""
    if not FULL_SST2.is_dir():
        why = f"the full SST-2 split is not at {FULL_SST2}"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI has shared/ beside the clone")
        pytest.skip(why)
    script = ROOT / "scripts" / "make_sst2_slice.py"
    done = subprocess.run([sys.executable, str(script), "--check", "--source", str(FULL_SST2)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    full = set((FULL_SST2 / "train.tsv").read_bytes().splitlines()[1:])
    with gzip.open(data.SHIPPED / "sst2" / "train.tsv.gz") as f:
        shipped = f.read().splitlines()[1:]
    assert set(shipped) <= full
