"""What a unit changed for one account, taken once after its records: lines, windows, hour totals.

A line or window carries the seq of the last record that touched it (its revision), so the ones
a unit changed are those above the account's seq before the unit: one pass over the account's
working set instead of two dict writes per record. The working set holds no more than the hours
and minutes the batch touched, and every line of an hour it touched (an hour is loaded whole
before a record touches it, and pruned whole), so an hour's total is summed here over all its
lines.

Compiled with the processor (setup.py compiles pipeline/batch/): on gateway traffic (one record
per message, 100,000 accounts) this runs about once per record, and interpreted it took a tenth
of the folding thread (py-spy, docs/performance-log.md).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pipeline.core.fold import PLUGIN_ITEM_PREFIX
from pipeline.core.state import AccountState, Instants, Line, with_instant
from pipeline.core.windows import minute_start
from pipeline.store.sink import BatchRows


class HourTotal:
    """One account-hour's sums over its lines (a bill_hour_totals row, sink.HOUR_TOTAL_FIELDS)."""

    def __init__(self) -> None:
        self.lines = 0
        self.calls = 0
        self.plugin_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.free_tokens = 0
        self.billed_input_tokens = 0
        self.billed_output_tokens = 0
        self.plugin_units = 0
        self.amount = Decimal(0)
        self.revision = 0

    def add(self, line: Line, plugin: bool) -> None:
        self.lines += 1
        if plugin:
            self.plugin_calls += line.requests
            self.plugin_units += line.quantity
        else:
            self.calls += line.requests
        self.input_tokens += line.input_tokens
        self.output_tokens += line.output_tokens
        self.free_tokens += line.free_tokens
        self.billed_input_tokens += line.billed_input_tokens
        self.billed_output_tokens += line.billed_output_tokens
        self.amount += line.amount
        if line.revision > self.revision:
            self.revision = line.revision

    def row(self, account_id: str, hour: int) -> tuple[Any, ...]:
        """In sink.HOUR_TOTAL_FIELDS' order (tests/unit/batch/test_changes.py ties the two)."""
        return (
            account_id,
            hour,
            self.lines,
            self.calls,
            self.plugin_calls,
            self.input_tokens,
            self.output_tokens,
            self.free_tokens,
            self.billed_input_tokens,
            self.billed_output_tokens,
            self.plugin_units,
            self.amount,
            self.revision,
        )


def collect_changed(rows: BatchRows, state: AccountState, seq_before: int, hours: Instants, minutes: Instants) -> tuple[Instants, Instants]:
    """The lines, windows and account-hour totals this unit changed, into `rows`. Returns the
    account's hours and minutes in memory (`hours`, `minutes`) with the ones they belong to."""
    acc = state.account_id
    changed: set[int] = set()
    for line_key, line in state.lines.items():
        if line.revision > seq_before:
            rows.lines[(acc, line_key)] = line
            changed.add(line_key[0])
    if changed:
        for hour in changed:
            hours = with_instant(hours, hour)
        _add_hour_totals(rows, state, changed)
    for window_key, window in state.windows.items():
        if window.revision > seq_before:
            rows.windows[(acc, window_key)] = window
            minutes = with_instant(minutes, minute_start(window_key[1]))
    return hours, minutes


def _add_hour_totals(rows: BatchRows, state: AccountState, changed: set[int]) -> None:
    """The whole hour's totals, never a difference, with the hour's highest line revision: a
    redelivered or replayed unit writes the same row again, a rebill's lines replace it like any
    record's, and a rolled-back unit's row goes with its lines (statestore.SEQ_COLUMNS). So
    `bill_hour_totals FINAL` always equals `bill_lines FINAL` summed per account-hour, and the
    pages that sum over every account read it instead of every line."""
    totals: dict[int, HourTotal] = {}
    for line_key, line in state.lines.items():
        hour = line_key[0]
        if hour not in changed:
            continue
        total = totals.get(hour)
        if total is None:
            total = totals[hour] = HourTotal()
        total.add(line, line_key[2].startswith(PLUGIN_ITEM_PREFIX))
    for hour, total in totals.items():
        rows.hour_totals.append(total.row(state.account_id, hour))
