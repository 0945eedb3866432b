"""Writes one batch's facts to ClickHouse: columnar inserts, deterministic rows, snapshot last.

Every row is keyed by identity and carries a revision taken from the account's sequence, so a
batch written twice (redelivery, replay, a retried insert) leaves the same current values. The
account snapshots go last: they are the commit point that a restart resumes from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Callable, Sequence

from clickhouse_connect.driver.client import Client

from pipeline.outputs import PricedUsage, Rejection, Settlement, StatusChange, Violation
from pipeline.state import AccountState, Line, LineKey, Window
from pipeline.statestore import record_hash
from pipeline.timestamps import US_PER_SECOND
from pipeline.windows import WindowKey


@dataclass(slots=True)
class RawRow:
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
    seen: list[tuple[str, str, str, int]] = field(default_factory=list)  # account, record_id, digest, seq
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


Column = tuple[str, Callable[[Any], Any]]


def _insert(client: Client, table: str, items: Sequence[Any], columns: Sequence[Column], constants: dict[str, Any] | None = None) -> None:
    """Columnar insert, built column by column (what clickhouse-connect inserts fastest)."""
    if not items:
        return
    names = [name for name, _ in columns] + list(constants or {})
    data = [[get(item) for item in items] for _, get in columns]
    data += [[value] * len(items) for value in (constants or {}).values()]
    client.insert(table, data, column_names=names, column_oriented=True)


def _attrs(*names: str) -> list[Column]:
    return [(name, attrgetter(name)) for name in names]


RAW = [("partition", attrgetter("partition")), ("offset", attrgetter("offset")), ("idx", attrgetter("idx")),
       ("account_id", attrgetter("account_id")), ("kind", attrgetter("kind")), ("record_id", attrgetter("record_id")),
       ("event_ts", lambda r: r.ts_us or 0), ("payload", attrgetter("payload"))]
SEEN = [("account_id", itemgetter(0)), ("rid_hash", lambda s: record_hash(s[1])), ("record_id", itemgetter(1)),
        ("digest", itemgetter(2)), ("seq", itemgetter(3))]
PRICED = [("hour", lambda p: p.hour_us // US_PER_SECOND), ("ts", attrgetter("ts_us")), ("plugins", lambda p: dict(p.plugins)),
          ("flags", lambda p: list(p.flags))] + _attrs(
    "account_id", "event_id", "api_key_id", "model", "channel", "input_tokens", "output_tokens", "free_tokens",
    "billed_input_tokens", "billed_output_tokens", "token_amount", "plugin_amount", "seq")
REJECTIONS = [("event_ts", lambda r: r.ts_us or 0), ("record", attrgetter("raw"))] + _attrs(
    "account_id", "record_id", "event_id", "kind", "reason", "detail", "seq")
VIOLATIONS = [("ts", attrgetter("ts_us")), ("limit_name", attrgetter("limit")), ("window_start", attrgetter("window_start_us"))] + _attrs(
    "account_id", "event_id", "observed", "allowed", "seq")
WINDOWS = [("account_id", lambda kv: kv[0][0]), ("kind", lambda kv: kv[0][1][0]), ("window_start", lambda kv: kv[0][1][1]),
           ("requests", lambda kv: kv[1].requests), ("tokens", lambda kv: kv[1].tokens), ("revision", lambda kv: kv[1].revision)]
LINE_VALUES = ("requests", "input_tokens", "output_tokens", "free_tokens", "billed_input_tokens", "billed_output_tokens",
               "quantity", "amount", "revision")
LINES = [("account_id", lambda kv: kv[0][0]), ("hour", lambda kv: kv[0][1][0] // US_PER_SECOND),
         ("api_key_id", lambda kv: kv[0][1][1]), ("item", lambda kv: kv[0][1][2])] + [
    (name, (lambda n: lambda kv: getattr(kv[1], n))(name)) for name in LINE_VALUES]
SETTLEMENTS = [("hour", lambda s: s.hour_us // US_PER_SECOND)] + _attrs(
    "account_id", "kind", "amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after", "seq")
STATUS = [("clock", attrgetter("ts_us"))] + _attrs("account_id", "status", "debt", "cash_balance", "seq")
STATES = [("account_id", itemgetter(0)), ("seq", lambda kv: kv[1].seq), ("state", lambda kv: kv[1].to_json().decode())]
PROGRESS = [("partition", itemgetter(0)), ("offset", itemgetter(1))]
BARRIERS = [("barrier_id", itemgetter(0)), ("partition", itemgetter(1))]


def write(client: Client, rows: BatchRows) -> None:
    now_ms = int(time.time() * 1000)
    _insert(client, "raw_records", rows.raw, RAW, {"epoch": rows.epoch, "received_at": now_ms})
    _insert(client, "seen_records", rows.seen, SEEN)
    _insert(client, "priced_usage", rows.priced, PRICED)
    _insert(client, "rejections", rows.rejections, REJECTIONS, {"rejected_at": now_ms})
    _insert(client, "rate_violations", rows.violations, VIOLATIONS)
    _insert(client, "rate_windows", list(rows.windows.items()), WINDOWS)
    _insert(client, "bill_lines", list(rows.lines.items()), LINES, {"updated_at": now_ms})
    _insert(client, "settlements", rows.settlements, SETTLEMENTS, {"settled_at": now_ms})
    _insert(client, "account_status", rows.status_changes, STATUS, {"changed_at": now_ms})
    _insert(client, "account_state", list(rows.states.items()), STATES, {"updated_at": now_ms})  # the commit point: last
    _insert(client, "partition_progress", rows.progress, PROGRESS, {"epoch": rows.epoch})
    _insert(client, "barriers", rows.barriers, BARRIERS, {"processed_at": now_ms})
