"""The one table renderer: model summaries, validation reports, attention analyses, the demo
and the benchmarks all print their tables through `render`.

    render(["layer", "params"], [["dense_0", "40"], ["dense_1", "9"]], align="lr")

Rows are sequences of cells (anything; printed with `str`, None as empty). Adding a column is
adding a header entry and one cell per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

STYLES = ("plain", "grid", "markdown")


def render(header: Sequence[str], rows: Iterable[Sequence[Any]], *, style: str = "plain",
           align: str | None = None) -> str:
    """A fixed-width text table.

    Args:
        header: column titles.
        rows: one sequence of cells per row, as many as the header.
        style: "plain" (two spaces between columns, a dashed rule under the header), "grid"
            (boxed with +-| rules) or "markdown" (a GitHub table).
        align: one letter per column, "l" or "r" (default: all left).

    Returns:
        The table as lines joined by newlines, without a trailing newline.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, given {style!r}")
    cells = [[_text(c) for c in header]]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, the header "
                             f"{list(header)!r} {len(header)}")
        cells.append([_text(c) for c in row])
    align = (align or "l" * len(header)).ljust(len(header), "l")
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fit(row: list[str]) -> list[str]:
        return [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]

    head, body = cells[0], cells[1:]
    if style == "grid":
        rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"
        lines = [rule, _boxed(fit(head)), rule, *(_boxed(fit(r)) for r in body), rule]
    elif style == "markdown":
        marks = [("-" * max(w - 1, 2) + ":") if a == "r" else "-" * max(w, 3)
                 for w, a in zip(widths, align)]
        lines = [_boxed(fit(head)), _boxed(marks), *(_boxed(fit(r)) for r in body)]
    else:
        lines = ["  ".join(fit(r)).rstrip() for r in (head, ["-" * w for w in widths], *body)]
    return "\n".join(lines)


def _text(cell: Any) -> str:
    return "" if cell is None else str(cell)


def _boxed(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
