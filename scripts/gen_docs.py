"""Regenerate the generated tables in docs/ from the code (``--check`` fails on drift)."""

from __future__ import annotations

import sys
from pathlib import Path

import adapterkit as ak

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"


def methods_table() -> str:
    rows = ["| method | config | kind | mergeable | sites | per-example routing | generate | paper |",
            "|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for m in ak.methods():
        rows.append(f"| `{m.name}` | `{m.config}` | {m.kind} | {yes[m.mergeable]} | {m.sites} | "
                    f"{yes[m.routable]} | {yes[m.generate]} | {m.paper} |")
    return "\n".join(rows)


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{methods_table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = ROOT / "docs" / "methods.md"
    old = path.read_text()
    new = render(old)
    if "--check" in argv:
        if new != old:
            print(f"{path} is out of date: run python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
