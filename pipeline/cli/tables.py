"""Rows on the terminal: a table that fits the terminal (rich), JSON lines, or CSV.

The table is for reading: numbers right-aligned, long ids shortened in the middle (the start and
the end tell ids apart), long text cut with an ellipsis, all within the terminal's width. JSON
and CSV are for scripts: every value in full, always (CONTRACT.md's fields).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from decimal import Decimal
from typing import Any, Sequence, TextIO

FORMATS = ("table", "json", "csv")
ID_WIDTH = 14  # on a terminal, an id longer than this is shortened (6 first + ... + 7 last characters)
TEXT_WIDTH = 60  # free text (details, records) beyond this is cut in the table
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
WIDE = 100_000  # not a terminal (a pipe, a file): nothing is cut


def emit(
    rows: list[dict[str, Any]],
    fmt: str,
    columns: Sequence[str] | None = None,
    out: TextIO | None = None,
    width: int | None = None,
    optional: Sequence[str] = (),
) -> None:
    """`width`: the terminal's columns (default: asked of the terminal); a table to a pipe or a file
    is never cut. `optional`: columns the table may leave out, first to last, when it cannot fit
    (said on stderr); JSON and CSV always have every column."""
    out = out if out is not None else sys.stdout
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")  # ASCII: no U+2028 or NEL inside a line to split it
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        if columns:
            writer.writeheader()  # also with no rows: a script still finds its columns
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    else:
        _table(rows, columns, out, width, optional)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def shorten_id(value: str, width: int = ID_WIDTH) -> str:
    """`sk-36ceb99cb50e215f3f5055ce` -> `sk-36ceb…5f3f5055ce`: the table view only."""
    if len(value) <= width:
        return value
    head = (width - 1) // 2
    return value[:head] + "…" + value[-(width - 1 - head) :]


def _is_id(column: str) -> bool:
    return column.endswith("_id") or column == "id"


def _numeric(column: str, cells: list[Any]) -> bool:
    if _is_id(column):
        return False
    values = [c for c in cells if c not in (None, "")]
    return bool(values) and all(
        isinstance(c, (int, float, Decimal)) and not isinstance(c, bool) or isinstance(c, str) and _NUMBER.fullmatch(c) is not None
        for c in values
    )


# Short headers for the table view (JSON and CSV keep the field names).
HEADERS = {
    "requests": "req",
    "input_tokens": "in_tok",
    "output_tokens": "out_tok",
    "free_tokens": "free_tok",
    "billed_input_tokens": "billed_in",
    "billed_output_tokens": "billed_out",
    "quantity": "qty",
    "old_amount": "old",
    "new_amount": "new",
    "voucher_part": "voucher",
    "debt_added": "debt+",
    "balance_after": "balance",
    "debt_after": "debt",
}
_TIME = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(:\d\d(\.\d+)?)?([+-]\d\d:\d\d|Z)")
FLEX_MIN = 12  # free text shrinks to this before a column is hidden
GAP = 2


def _compact_times(column: str, cells: list[str]) -> tuple[str, list[str]]:
    """`2024-09-18T03:00:00.123+08:00` -> `2024-09-18 03:00:00` (seconds only where some are not
    :00, no fraction) with the offset in the header, when every value has the same offset."""
    matches = [_TIME.fullmatch(c) for c in cells if c]
    if not matches or any(m is None for m in matches):
        return column, cells
    offsets = {m.group(5) for m in matches if m is not None}
    if len(offsets) != 1:
        return column, cells
    seconds = any((m.group(3) or ":00")[:3] != ":00" for m in matches if m is not None)
    out = []
    for c in cells:
        m = _TIME.fullmatch(c)
        out.append(f"{m.group(1)} {m.group(2)}{(m.group(3) or ':00')[:3] if seconds else ''}" if m else c)
    return f"{column} ({offsets.pop()})", out


def _text_widths(prepared: list[tuple[str, str, list[str], str]], width: int) -> dict[str, int]:
    """Widths of the free-text columns: what the fixed ones leave, shared out (each at most its
    natural width and TEXT_WIDTH)."""
    naturals = {
        name: min(max(len(header), *(len(c) for c in cells)), TEXT_WIDTH) for name, header, cells, kind in prepared if kind == "text"
    }
    fixed = sum(max(len(header), *(len(c) for c in cells)) for _, header, cells, kind in prepared if kind != "text")
    left = width - fixed - GAP * (len(prepared) - 1)
    widths: dict[str, int] = {}
    pending = sorted(naturals, key=naturals.get)  # type: ignore[arg-type]
    while pending:
        share = max(left // len(pending), 4)  # below FLEX_MIN only when nothing more can be left out
        name = pending.pop(0)
        widths[name] = min(naturals[name], share)
        left -= widths[name]
    return widths


def _table(rows: list[dict[str, Any]], columns: list[str], out: TextIO, width: int | None, optional: Sequence[str] = ()) -> None:
    if not rows:
        out.write("(no rows)\n")
        return
    from rich.console import Console
    from rich.table import Table

    tty = out.isatty()
    if tty and width is None:
        width = shutil.get_terminal_size().columns
    # per column: (header, cells, kind); kind: "number" and "fixed" are never cut, "text" shrinks
    prepared = []
    for column in columns:
        raw = [row.get(column) for row in rows]
        # a lone surrogate (hostile input, kept as received) cannot be printed: shown escaped, table only
        cells = [_cell(v).encode("utf-8", "backslashreplace").decode("utf-8") for v in raw]
        header = HEADERS.get(column, column) if tty else column
        if tty:
            header, cells = _compact_times(header, cells)
        if _numeric(column, raw):
            kind = "number"
        elif _is_id(column):
            kind = "fixed"
            cells = [shorten_id(c) for c in cells] if tty else cells
        else:
            kind = "fixed" if header != column or column in ("hour", "timestamp", "status", "reason", "kind") else "text"
        prepared.append((column, header, cells, kind))
    hidden: list[str] = []
    if tty and width:

        def least(entry: tuple[str, str, list[str], str]) -> int:
            natural = max(len(entry[1]), *(len(c) for c in entry[2]))
            return min(natural, FLEX_MIN) if entry[3] == "text" else natural

        for name in optional:
            if sum(least(e) for e in prepared) + GAP * (len(prepared) - 1) <= width:
                break
            if any(e[0] == name for e in prepared):
                prepared = [e for e in prepared if e[0] != name]
                hidden.append(name)
    text_widths = _text_widths(prepared, width) if tty and width else {}
    console = Console(
        file=out, width=width if tty else WIDE, highlight=False, emoji=False, markup=False, color_system="auto" if tty else None
    )
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold underline" if tty else "")
    for name, header, cells, kind in prepared:
        natural = max(len(header), *(len(c) for c in cells))
        if kind == "number":
            table.add_column(header, justify="right", no_wrap=True, min_width=natural)
        elif kind == "fixed":
            table.add_column(header, no_wrap=True, min_width=natural, overflow="ellipsis")
        else:
            table.add_column(header, no_wrap=True, overflow="ellipsis", width=text_widths.get(name))
    for i in range(len(rows)):
        table.add_row(*(cells[i] for _, _, cells, _ in prepared))
    if tty:
        console.print(table, crop=True)
    else:  # a pipe or a file: no padding after the last column
        with console.capture() as captured:
            console.print(table, soft_wrap=True)
        out.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    if hidden:
        sys.stderr.write(f"(not shown to fit {width} columns: {', '.join(hidden)}; --format json or csv has every field)\n")
