"""Writes one batch's facts to ClickHouse: columnar inserts, deterministic rows, snapshot last.

Every row is keyed by identity and carries a revision taken from the account's sequence, so a
batch written twice (redelivery, replay, a retried insert) leaves the same current values. The
account snapshots go last: they are the commit point that a restart resumes from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, NamedTuple, Sequence

from clickhouse_connect.driver.client import Client

from pipeline.outputs import PricedUsage, Rejection, Settlement, StatusChange, Violation
from pipeline.state import AccountState, Line, LineKey, Window
from pipeline.statestore import record_hash
from pipeline.timestamps import US_PER_SECOND
from pipeline.windows import WindowKey


class RawRow(NamedTuple):
    partition: int
    offset: int
    idx: int
    account_id: str
    kind: str
    record_id: str
    ts_us: int | None
    payload: str


@dataclass
class BatchRows:
    """Everything one batch adds; filled by the processor, emptied into ClickHouse by `write`."""

    epoch: str = ""
    raw: list[RawRow] = field(default_factory=list)
    seen: list[SeenRow] = field(default_factory=list)
    priced: list[PricedUsage] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    lines: dict[tuple[str, LineKey], Line] = field(default_factory=dict)
    windows: dict[tuple[str, WindowKey], Window] = field(default_factory=dict)
    settlements: list[Settlement] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    states: dict[str, AccountState] = field(default_factory=dict)
    barriers: list[tuple[str, int]] = field(default_factory=list)
    progress: list[tuple[int, int]] = field(default_factory=list)  # (partition, last offset of the batch)

    def row_count(self) -> int:
        return len(self.raw) + len(self.seen) + len(self.priced) + len(self.rejections) + len(self.violations) + len(self.lines) + len(self.windows) + len(self.states)


Column = tuple[str, str, Callable[[Any], Any] | None]  # (ClickHouse column, field of the fact, conversion)


def _insert(client: Client, table: str, items: Sequence[tuple[Any, ...]], columns: Sequence[Column],
            constants: dict[str, Any] | None = None) -> None:
    """Columnar insert of NamedTuple facts: one C-level transpose, then only the columns that need
    a conversion are touched value by value (building rows cost more than inserting them)."""
    if not items:
        return
    by_field = dict(zip(items[0]._fields, zip(*items)))  # type: ignore[attr-defined]
    data: list[Sequence[Any]] = [by_field[source] if convert is None else list(map(convert, by_field[source]))
                                 for _, source, convert in columns]
    data += [[value] * len(items) for value in (constants or {}).values()]
    client.insert(table, data, column_names=[name for name, _, _ in columns] + list(constants or {}), column_oriented=True)


def _same(*names: str) -> list[Column]:
    return [(name, name, None) for name in names]


def _seconds(us: int) -> int:
    return us // US_PER_SECOND


def _or_zero(ts_us: int | None) -> int:
    return ts_us or 0


class SeenRow(NamedTuple):
    account_id: str
    record_id: str
    digest: str
    seq: int


class WindowRow(NamedTuple):
    account_id: str
    kind: str
    window_start: int
    requests: int
    tokens: int
    revision: int


class LineRow(NamedTuple):
    account_id: str
    hour: int
    api_key_id: str
    item: str
    requests: int
    input_tokens: int
    output_tokens: int
    free_tokens: int
    billed_input_tokens: int
    billed_output_tokens: int
    quantity: int
    amount: Decimal
    revision: int


class StateRow(NamedTuple):
    account_id: str
    seq: int
    state: str


class ProgressRow(NamedTuple):
    partition: int
    offset: int


class BarrierRow(NamedTuple):
    barrier_id: str
    partition: int


RAW = _same("partition", "offset", "idx", "account_id", "kind", "record_id", "payload") + [("event_ts", "ts_us", _or_zero)]
SEEN = _same("account_id", "record_id", "digest", "seq") + [("rid_hash", "record_id", record_hash)]
PRICED = [("hour", "hour_us", _seconds), ("ts", "ts_us", None), ("plugins", "plugins", dict), ("flags", "flags", list)] + _same(
    "account_id", "event_id", "api_key_id", "model", "channel", "input_tokens", "output_tokens", "free_tokens",
    "billed_input_tokens", "billed_output_tokens", "token_amount", "plugin_amount", "seq")
REJECTIONS = [("event_ts", "ts_us", _or_zero), ("record", "raw", None)] + _same(
    "account_id", "record_id", "event_id", "kind", "reason", "detail", "seq")
VIOLATIONS = [("ts", "ts_us", None), ("limit_name", "limit", None), ("window_start", "window_start_us", None)] + _same(
    "account_id", "event_id", "observed", "allowed", "seq")
WINDOWS = _same(*WindowRow._fields)
LINES = [("hour", "hour", _seconds)] + _same(*(name for name in LineRow._fields if name != "hour"))
SETTLEMENTS = [("hour", "hour_us", _seconds)] + _same(
    "account_id", "kind", "amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after", "seq")
STATUS = [("clock", "ts_us", None)] + _same("account_id", "status", "debt", "cash_balance", "seq")
STATES = _same(*StateRow._fields)
PROGRESS = _same(*ProgressRow._fields)
BARRIERS = _same(*BarrierRow._fields)


def _window_rows(windows: dict[tuple[str, WindowKey], Window]) -> list[WindowRow]:
    return [WindowRow(acc, kind, start, w.requests, w.tokens, w.revision) for (acc, (kind, start)), w in windows.items()]


def _line_rows(lines: dict[tuple[str, LineKey], Line]) -> list[LineRow]:
    return [LineRow(acc, hour, key, item, v.requests, v.input_tokens, v.output_tokens, v.free_tokens, v.billed_input_tokens,
                    v.billed_output_tokens, v.quantity, v.amount, v.revision) for (acc, (hour, key, item)), v in lines.items()]


def write(client: Client, rows: BatchRows) -> None:
    now_ms = int(time.time() * 1000)
    _insert(client, "raw_records", rows.raw, RAW, {"epoch": rows.epoch, "received_at": now_ms})
    _insert(client, "seen_records", rows.seen, SEEN)
    _insert(client, "priced_usage", rows.priced, PRICED)
    _insert(client, "rejections", rows.rejections, REJECTIONS, {"rejected_at": now_ms})
    _insert(client, "rate_violations", rows.violations, VIOLATIONS)
    _insert(client, "rate_windows", _window_rows(rows.windows), WINDOWS)
    _insert(client, "bill_lines", _line_rows(rows.lines), LINES, {"updated_at": now_ms})
    _insert(client, "settlements", rows.settlements, SETTLEMENTS, {"settled_at": now_ms})
    _insert(client, "account_status", rows.status_changes, STATUS, {"changed_at": now_ms})
    states = [StateRow(acc, state.seq, state.to_json().decode()) for acc, state in rows.states.items()]
    _insert(client, "account_state", states, STATES, {"updated_at": now_ms})  # the commit point: last
    _insert(client, "partition_progress", [ProgressRow(*p) for p in rows.progress], PROGRESS, {"epoch": rows.epoch})
    _insert(client, "barriers", [BarrierRow(*b) for b in rows.barriers], BARRIERS, {"processed_at": now_ms})
