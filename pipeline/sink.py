"""Writes one batch's facts to ClickHouse: columnar inserts, deterministic rows, snapshot last.

Every row is keyed by identity and carries a revision taken from the account's sequence, so a
batch written twice (redelivery, replay, a retried insert) leaves the same current values. The
account snapshots go last: they are the commit point that a restart resumes from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Sequence

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

    def row_count(self) -> int:
        return len(self.raw) + len(self.seen) + len(self.priced) + len(self.rejections) + len(self.violations) + len(self.lines) + len(self.windows) + len(self.states)


def _insert(client: Client, table: str, columns: Sequence[str], data: list[list[Any]]) -> None:
    if data and data[0]:
        client.insert(table, data, column_names=list(columns), column_oriented=True)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Row tuples -> columns, the layout clickhouse-connect inserts fastest."""
    return list(map(list, zip(*rows))) if rows else [[] for _ in range(width)]


def write(client: Client, rows: BatchRows) -> None:
    now_ms = int(time.time() * 1000)
    _insert(client, "raw_records",
            ["epoch", "partition", "offset", "account_id", "kind", "record_id", "event_ts", "received_at", "payload"],
            _columns([(rows.epoch, r.partition, r.offset, r.account_id, r.kind, r.record_id, r.ts_us or 0, now_ms, r.payload) for r in rows.raw], 9))
    _insert(client, "seen_records", ["account_id", "rid_hash", "record_id", "digest", "seq"],
            _columns([(acc, record_hash(rid), rid, digest, seq) for acc, rid, digest, seq in rows.seen], 5))
    _insert(client, "priced_usage",
            ["account_id", "hour", "event_id", "ts", "api_key_id", "model", "channel", "input_tokens", "output_tokens",
             "free_tokens", "billed_input_tokens", "billed_output_tokens", "token_amount", "plugin_amount", "plugins", "flags", "seq"],
            _columns([(p.account_id, p.hour_us // US_PER_SECOND, p.event_id, p.ts_us, p.api_key_id, p.model, p.channel,
                       p.input_tokens, p.output_tokens, p.free_tokens, p.billed_input_tokens, p.billed_output_tokens,
                       p.token_amount, p.plugin_amount, dict(p.plugins), list(p.flags), p.seq) for p in rows.priced], 17))
    _insert(client, "rejections",
            ["account_id", "record_id", "event_id", "kind", "reason", "detail", "event_ts", "record", "seq", "rejected_at"],
            _columns([(r.account_id, r.record_id, r.event_id, r.kind, r.reason, r.detail, r.ts_us or 0, r.raw, r.seq, now_ms)
                      for r in rows.rejections], 10))
    _insert(client, "rate_violations",
            ["account_id", "event_id", "ts", "limit_name", "window_start", "observed", "allowed", "seq"],
            _columns([(v.account_id, v.event_id, v.ts_us, v.limit, v.window_start_us, v.observed, v.allowed, v.seq)
                      for v in rows.violations], 8))
    _insert(client, "rate_windows", ["account_id", "kind", "window_start", "requests", "tokens", "revision"],
            _columns([(acc, kind, start, w.requests, w.tokens, w.revision) for (acc, (kind, start)), w in rows.windows.items()], 6))
    _insert(client, "bill_lines",
            ["account_id", "hour", "api_key_id", "item", "requests", "input_tokens", "output_tokens", "free_tokens",
             "billed_input_tokens", "billed_output_tokens", "quantity", "amount", "revision", "updated_at"],
            _columns([(acc, hour // US_PER_SECOND, key, item, ln.requests, ln.input_tokens, ln.output_tokens, ln.free_tokens,
                       ln.billed_input_tokens, ln.billed_output_tokens, ln.quantity, ln.amount, ln.revision, now_ms)
                      for (acc, (hour, key, item)), ln in rows.lines.items()], 14))
    _insert(client, "settlements",
            ["account_id", "hour", "kind", "amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after", "seq", "settled_at"],
            _columns([(s.account_id, s.hour_us // US_PER_SECOND, s.kind, s.amount, s.voucher_part, s.cash_part, s.debt_added,
                       s.debt_after, s.balance_after, s.seq, now_ms) for s in rows.settlements], 11))
    _insert(client, "account_status", ["account_id", "status", "debt", "cash_balance", "clock", "seq", "changed_at"],
            _columns([(c.account_id, c.status, c.debt, c.cash_balance, c.ts_us, c.seq, now_ms) for c in rows.status_changes], 7))
    _insert(client, "account_state", ["account_id", "seq", "state", "updated_at"],
            _columns([(acc, st.seq, st.to_json().decode(), now_ms) for acc, st in rows.states.items()], 4))
    _insert(client, "barriers", ["barrier_id", "partition", "processed_at"],
            _columns([(b, p, now_ms) for b, p in rows.barriers], 3))


def decimal_str(amount: Decimal) -> str:
    return f"{amount:.6f}"
