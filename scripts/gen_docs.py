"""Regenerate the generated tables in docs/ from the code (``--check`` fails on drift)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import adapterkit as ak
from adapterkit.compose.blocks import NAME, NESTING, SEMANTICS

ROOT = Path(__file__).resolve().parents[1]


def methods_table() -> str:
    rows = ["| method | config | kind | mergeable | sites | per-example routing | generate | paper |",
            "|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for m in ak.methods():
        rows.append(f"| `{m.name}` | `{m.config}` | {m.kind} | {yes[m.mergeable]} | {m.sites} | "
                    f"{yes[m.routable]} | {yes[m.generate]} | {m.paper} |")
    return "\n".join(rows)


def composition_tables() -> str:
    """What each block computes per method kind, and which block may hold which."""
    rows = ["| block | weight-delta adapters (LoRA, VeRA, DoRA, IA3) | residual adapters "
            "(bottleneck) | in general |", "|---|---|---|---|"]
    rows += [f"| `{b}` | {w} | {r} | {g} |" for b, (w, r, g) in SEMANTICS.items()]
    kinds = [NAME, "__base__", *NESTING]
    rows += ["", "Legal nesting (row: parent, column: child; blocks no parent holds are legal only "
             "at the top level):", "",
             "| parent | " + " | ".join(f"`{k}`" if k != NAME else "adapter name" for k in kinds)
             + " |", "|---" * (len(kinds) + 1) + "|"]
    for parent, held in NESTING.items():
        rows.append(f"| `{parent}` | " + " | ".join("yes" if k in held else "" for k in kinds) + " |")
    routable = ", ".join(f"`{m.name}`" for m in ak.methods() if m.routable)
    rows += ["", f"Methods that run under `Route` (`routable=True`): {routable}."]
    return "\n".join(rows)


#: file -> (marker name, renderer) of each generated block
BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "methods.md": ("methods", methods_table),
    "composition.md": ("composition", composition_tables),
}


def render(text: str, marker: str, body: str) -> str:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main(argv: list[str]) -> int:
    stale = []
    for name, (marker, make) in BLOCKS.items():
        path = ROOT / "docs" / name
        old = path.read_text()
        new = render(old, marker, make())
        if new == old:
            continue
        if "--check" in argv:
            stale.append(str(path))
        else:
            path.write_text(new)
    if stale:
        print(f"{stale} out of date: run python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
