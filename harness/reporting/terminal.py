"""Tables in a terminal: a report table (display cells) printed with rich at the console's width,
split into panels of whole columns, each repeating the key columns, instead of squeezing every
column until numbers fold across lines.

    harness leaderboard runs/            # harness.cli.report
    harness sweep status sweeps/quickstart.yaml
    harness eval runs/dpo-0001

At 80 columns a leaderboard of a dozen metrics becomes three or four stacked tables whose every
cell reads whole; on a wide terminal it stays one table.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from harness.reporting.tables import Table

#: a column allowed to wrap (free text such as a configuration) is planned at most this wide
WRAP_WIDTH = 26
#: a header up to this wide stays on one line (longer ones wrap at spaces)
HEADER_WIDTH = 14


def _lines(text: str) -> list[str]:
    return str(text).split("\n")


def _width(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in _lines(text)), default=0)


def _longest_word(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for line in _lines(text) for w in line.split()), default=0)


@dataclass
class Panel:
    columns: list[int]
    widths: list[int]


def table_width(widths: Sequence[int]) -> int:
    """Characters a rich table with these column widths takes: one space of padding on each side
    of a cell and a rule between and around the columns."""
    return sum(widths) + 3 * len(widths) + 1


def plan_panels(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, *, keys: int = 1,
                wrap: Collection[str] = ()) -> list[Panel]:
    """Split the columns into panels that fit ``width``, each starting with the first ``keys``
    columns.  A column is planned as wide as its widest cell (its header may wrap at spaces);
    a ``wrap`` column at most :data:`WRAP_WIDTH` (or its longest word); a column too wide for
    any panel gets what is left and folds."""
    planned, natural = [], []
    for i, h in enumerate(headers):
        cells = [str(r[i]) for r in rows if i < len(r)]
        widest = max([_width(c) for c in cells] + [1])
        natural.append(max(widest, _width(h) if h in wrap else 0))
        if h in wrap:
            widest = min(widest, max([WRAP_WIDTH, *(_longest_word(c) for c in cells)]))
        planned.append(max(widest, _longest_word(h), min(_width(h), HEADER_WIDTH)))
    key_cols = list(range(min(keys, len(headers))))
    panels: list[Panel] = []
    current = Panel(list(key_cols), [planned[i] for i in key_cols])
    for i in range(len(key_cols), len(headers)):
        if len(current.columns) > len(key_cols) and table_width([*current.widths, planned[i]]) > width:
            panels.append(current)
            current = Panel(list(key_cols), [planned[k] for k in key_cols])
        room = width - table_width([*current.widths, 0])
        current.columns.append(i)
        current.widths.append(max(1, min(planned[i], room)))
    if len(current.columns) > len(key_cols) or not panels:
        panels.append(current)
    for panel in panels:  # room left in a panel goes to its wrapping columns, up to their full text
        for j, i in enumerate(panel.columns):
            spare = width - table_width(panel.widths)
            if headers[i] in wrap and spare > 0:
                panel.widths[j] = max(panel.widths[j], min(natural[i], panel.widths[j] + spare))
    return panels


def rich_tables(table: Table, width: int, *, title: str | None = None, keys: int = 1,
                wrap: Collection[str] = (), justify_right: Collection[str] = ()) -> list[Any]:
    """The rich tables (panels) that show ``table`` within ``width`` characters."""
    from rich.table import Table as RichTable
    from rich.text import Text

    panels = plan_panels(table.headers, table.rows, width, keys=keys, wrap=wrap)
    out = []
    for n, panel in enumerate(panels):
        rt = RichTable(title=Text(title) if title and n == 0 else None, title_justify="left")
        for i, w in zip(panel.columns, panel.widths):
            h = table.headers[i]
            rt.add_column(Text(h), width=w, overflow="fold", justify="right" if h in justify_right else "left")
        for r in table.rows:  # Text: a cell such as "gold [heldout]" is never read as rich markup
            rt.add_row(*[Text(str(r[i])) if i < len(r) else "" for i in panel.columns])
        out.append(rt)
    return out


def print_table(console: Any, table: Table, *, title: str | None = None, keys: int = 1,
                wrap: Collection[str] = (), justify_right: Collection[str] = (), notes: Sequence[str] = ()) -> None:
    """Print ``table`` on ``console`` at its width (panels as needed), then ``notes``.  The table's
    caption is its title when ``title`` is None, else a line after it."""
    caption = table.caption if title is not None else ""
    for rt in rich_tables(table, console.width, title=title if title is not None else table.caption or None,
                          keys=keys, wrap=wrap, justify_right=justify_right):
        console.print(rt)
    for line in [caption, *notes]:
        if line:
            console.print(line, highlight=False, markup=False)
