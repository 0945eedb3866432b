"""A unit's aggregate rows and account snapshots as the sink inserts them, one compiled loop each.

On gateway traffic (one record per message, 100,000 accounts) a unit touches about one account
per record, and each account gives a snapshot row, its redo, a bill line, an hour total and a
few rate windows. Interpreted in store/sink.py these loops took about a tenth of the folding
thread (py-spy on `bench.gateway_processor`, docs/performance-log.md); the row layouts stay
defined there (sink.LINE_ROW_FIELDS, WindowRow, StateRow), and tests/unit/batch/test_aggregate_rows.py
ties these tuples to them.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.state import AccountState, Line, LineKey, Window
from pipeline.core.windows import WindowKey


def line_rows(lines: dict[tuple[str, LineKey], Line]) -> list[tuple[Any, ...]]:
    """Plain tuples in sink.LINE_ROW_FIELDS' order: key, state.LINE_COUNTS, amount, revision."""
    rows: list[tuple[Any, ...]] = []
    for (acc, (hour, key, item)), v in lines.items():
        rows.append(
            (
                acc,
                hour,
                key,
                item,
                v.requests,
                v.input_tokens,
                v.output_tokens,
                v.free_tokens,
                v.billed_input_tokens,
                v.billed_output_tokens,
                v.quantity,
                v.amount,
                v.revision,
            )
        )
    return rows


def window_rows(windows: dict[tuple[str, WindowKey], Window]) -> list[tuple[Any, ...]]:
    """Plain tuples in sink.WindowRow's field order."""
    rows: list[tuple[Any, ...]] = []
    for (acc, (kind, start)), w in windows.items():
        rows.append((acc, kind, start, w.requests, w.tokens, w.revision))
    return rows


def redo_texts(tables: dict[str, list[tuple[Any, ...]]]) -> dict[str, str]:
    """Each account's rows of the aggregate tables, grouped and written as one JSON text per
    account: the redo its snapshot carries (sink.encode, statestore.roll_forward). Money goes as
    its exact decimal text (str of the Decimal, as columns.decimal_texts writes it), never a float."""
    grouped: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for table, table_rows in tables.items():
        for row in table_rows:
            acc: str = row[0]  # every row starts with its account
            redo = grouped.get(acc)
            if redo is None:
                redo = grouped[acc] = {}
            found = redo.get(table)
            if found is None:
                redo[table] = [row]
            else:
                found.append(row)
    texts: dict[str, str] = {}
    for acc, redo in grouped.items():
        texts[acc] = orjson.dumps(redo, default=str).decode()
    return texts


def state_rows(states: dict[str, AccountState], redo: dict[str, str]) -> list[tuple[Any, ...]]:
    """Plain tuples in sink.StateRow's field order: one snapshot per account the unit touched."""
    rows: list[tuple[Any, ...]] = []
    for acc, state in states.items():
        rows.append((acc, state.seq, state.to_json().decode(), redo.get(acc, ""), state.log_epoch, state.log_partition, state.log_offset))
    return rows
