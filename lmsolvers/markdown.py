"""The one markdown-table formatter of the project (library reports and benchmark scripts)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["markdown_table"]


def _cell(value: object) -> str:
    # A literal "|" would end the cell early; a newline would end the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (no trailing newline).

    Cells are ``str()``-ed with ``|`` escaped.  Every row must have as many cells as the
    header: a short row would silently shift the columns of everything after it.
    """
    head = [_cell(h) for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows):
        cells = [_cell(c) for c in row]
        if len(cells) != len(head):
            raise ValueError(f"row {i} has {len(cells)} cells, the header {len(head)}: {row!r}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
