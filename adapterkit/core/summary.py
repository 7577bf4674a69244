"""A small printable table of adapters."""

from __future__ import annotations

from typing import Any


class SummaryTable:
    """Rows of ``kit.summary()``; ``str()`` renders an aligned text table."""

    columns = ("name", "method", "trainable", "% of base", "sites", "merged", "active")

    def __init__(self, rows: list[dict[str, Any]], base_parameters: int) -> None:
        self.rows = rows
        self.base_parameters = base_parameters

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    @staticmethod
    def _cell(value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    def __str__(self) -> str:
        cells = [list(self.columns)] + [[self._cell(r[c]) for c in self.columns] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"base parameters: {self.base_parameters:,}")
        return "\n".join(lines)

    __repr__ = __str__
