"""Rows on the terminal: an aligned table, JSON lines, or CSV."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any, Sequence, TextIO

FORMATS = ("table", "json", "csv")


def emit(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None, out: TextIO = sys.stdout) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row) + "\n")  # ASCII: no U+2028 or NEL inside a line to split it
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    else:
        _table(rows, columns, out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str], out: TextIO) -> None:
    if not rows:
        out.write("(no rows)\n")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
