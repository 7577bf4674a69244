"""Regenerate the SST-2 data shipped in ``adapterkit/train/glue_data/sst2/`` from the full GLUE
files (``../shared/data/glue/sst2/`` beside the checkout, or ``--source``).

``train.tsv.gz`` holds the header and a seeded random sample of ``--rows`` rows of the full
``train.tsv`` (67,349 rows), in their original order and byte for byte as they are there;
``dev.tsv.gz`` is the whole ``dev.tsv`` (872 rows). The gzip streams carry no file name and no
time stamp, so the same inputs give the same bytes. ``--check`` compares instead of writing and
exits 1 when the shipped files differ.

    python scripts/make_sst2_slice.py            # write the files
    python scripts/make_sst2_slice.py --check    # verify the shipped files
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "glue" / "sst2"
TARGET = ROOT / "adapterkit" / "train" / "glue_data" / "sst2"
#: the demo's budget: 400 steps of batch 32, so every shipped training row is seen once
ROWS = 400 * 32
SEED = 0


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzip-compressed at level 9 with an empty name and a zero time stamp."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def sample_train(text: bytes, rows: int, seed: int) -> bytes:
    """The header line and ``rows`` lines drawn by ``random.Random(seed)``, in file order."""
    lines = text.splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    if rows > len(body):
        raise SystemExit(f"--rows {rows} exceeds the {len(body)} rows of the train split")
    keep = sorted(random.Random(seed).sample(range(len(body)), rows))
    return b"".join([header, *(body[i] for i in keep)])


def build(source: Path, rows: int, seed: int) -> dict[str, bytes]:
    """File name -> compressed bytes of the shipped files."""
    for name in ("train.tsv", "dev.tsv"):
        if not (source / name).is_file():
            raise SystemExit(f"{source / name} is missing: point --source at the GLUE sst2 folder")
    train = sample_train((source / "train.tsv").read_bytes(), rows, seed)
    return {"train.tsv.gz": gzip_bytes(train),
            "dev.tsv.gz": gzip_bytes((source / "dev.tsv").read_bytes())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with train.tsv, dev.tsv")
    parser.add_argument("--out", type=Path, default=TARGET)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    files = build(args.source, args.rows, args.seed)
    if args.check:
        stale = [n for n, data in files.items()
                 if not (args.out / n).is_file() or (args.out / n).read_bytes() != data]
        if stale:
            print(f"differ from a fresh build: {', '.join(stale)} in {args.out}", file=sys.stderr)
            return 1
        print(f"{args.out}: {', '.join(files)} match a fresh build")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
