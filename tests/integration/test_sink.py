"""The sink's JSON bodies, read back from the real engine: every value lands exactly.

The sink writes JSONCompactColumns made by orjson, where ClickHouse reads a number in a
DateTime64 column as seconds and money travels as decimal text. These tests pin the edges: the
first and last microsecond the validator lets in, money at the Decimal(18, 6) limits, and text
that JSON must escape.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.core.facts import PricedUsage, Settlement, StatusChange
from pipeline.core.records import EARLIEST_US, LATEST_US
from pipeline.core.state import AccountState, Line
from pipeline.core.timestamps import US_PER_HOUR, parse_ts
from pipeline.settings import Settings
from pipeline.store import sink
from pipeline.store.chclient import connect
from pipeline.store.sink import BatchRows, RawRow

pytestmark = pytest.mark.integration


@pytest.fixture(params=["one client", "lanes"])
def lanes(request: pytest.FixtureRequest, inprocess_dir: Path) -> Iterator[sink.InsertLanes | None]:
    """A unit written one insert after another on the test's client, or as the worker writes it:
    each step's inserts side by side on clients of their own (the same engine)."""
    if request.param == "one client":
        yield None
        return
    lanes = sink.InsertLanes(lambda: connect(Settings(data_dir=inprocess_dir).clickhouse_url), 3)
    yield lanes
    lanes.close()


EDGE_TIMES = [EARLIEST_US, EARLIEST_US + 1, parse_ts("2024-06-06T20:00:44.240+08:00") + 7, LATEST_US - 1]
EDGE_MONEY = [
    Decimal("0"),
    Decimal("0.000001"),
    Decimal("-0.000001"),
    Decimal("999999999999.999999"),
    Decimal("-999999999999.999999"),
    Decimal("12.5"),
]
AWKWARD_TEXT = ['{"a": "quote \\" backslash \\\\ tab \t"}', "line\nbreak and NUL \x00", "星辰 emoji 🙂 \u2028"]


def _priced(acc: str, i: int, ts_us: int, money: Decimal) -> PricedUsage:
    return PricedUsage(
        acc,
        f"evt-{i}",
        ts_us,
        ts_us - ts_us % US_PER_HOUR,
        "sk-1",
        "xingchen-plus",
        "api",
        10,
        20,
        5,
        5,
        20,
        money,
        -money,
        (("search", 2), ("draw", 1)) if i % 2 else (),
        ("late",) if i % 3 else (),
        i + 1,
    )


def test_times_money_and_text_land_exactly(client, lanes: sink.InsertLanes | None) -> None:
    acc = f"sink-{uuid.uuid4().hex[:12]}"
    rows = BatchRows(epoch="sink-test")
    for i, (ts_us, money, text) in enumerate(zip(EDGE_TIMES * 2, EDGE_MONEY, AWKWARD_TEXT * 2)):
        rows.raw.append(RawRow(0, i, 0, acc, "usage", f"evt-{i}", ts_us, text))
        rows.priced.append(_priced(acc, i, ts_us, money))
        rows.settlements.append(Settlement(acc, ts_us - ts_us % US_PER_HOUR, "regular", money, money, money, money, money, money, i))
        rows.status_changes.append(StatusChange(acc, "active", money, -money, ts_us, i))
    rows.raw.append(RawRow(0, 99, 0, acc, "invalid", "raw:x", None, "not json"))
    line = Line()
    line.requests, line.amount, line.revision = 3, Decimal("123.456789"), 7
    rows.lines[(acc, (EDGE_TIMES[2] - EDGE_TIMES[2] % US_PER_HOUR, "sk-1", "tokens"))] = line
    rows.states[acc] = AccountState(acc)
    sink.send(client, sink.encode(rows), lanes)

    raw = client.query(
        "SELECT offset, toUnixTimestamp64Micro(event_ts), payload FROM raw_records WHERE account_id = {a:String} ORDER BY offset",
        parameters={"a": acc},
    ).result_rows
    assert raw == [(r.offset, r.ts_us or 0, r.payload) for r in rows.raw]
    priced = client.query(
        "SELECT event_id, toUnixTimestamp64Micro(ts), toUnixTimestamp(hour), token_amount, plugin_amount, "
        "plugins, flags FROM priced_usage WHERE account_id = {a:String} ORDER BY seq",
        parameters={"a": acc},
    ).result_rows
    assert priced == [
        (p.event_id, p.ts_us, p.hour_us // 1_000_000, p.token_amount, p.plugin_amount, dict(p.plugins), list(p.flags)) for p in rows.priced
    ]
    settled = client.query(
        "SELECT toString(amount), toString(balance_after) FROM settlements WHERE account_id = {a:String} ORDER BY seq",
        parameters={"a": acc},
    ).result_rows
    assert [Decimal(a) for a, _ in settled] == EDGE_MONEY
    status = client.query(
        "SELECT toUnixTimestamp64Micro(clock), debt, cash_balance FROM account_status WHERE account_id = {a:String} ORDER BY seq",
        parameters={"a": acc},
    ).result_rows
    assert status == [(c.ts_us, c.debt, c.cash_balance) for c in rows.status_changes]
    lines = client.query(
        "SELECT requests, amount, revision FROM bill_lines WHERE account_id = {a:String}", parameters={"a": acc}
    ).result_rows
    assert lines == [(3, Decimal("123.456789"), 7)]


def test_an_empty_batch_writes_nothing_and_a_refused_value_stops_before_the_snapshot(client, lanes: sink.InsertLanes | None) -> None:
    """A body ClickHouse refuses fails the whole write before the account snapshot, the commit
    point, so a restart re-applies the batch instead of trusting half of it."""
    acc = f"sink-{uuid.uuid4().hex[:12]}"
    sink.send(client, sink.encode(BatchRows(epoch="sink-test")), lanes)  # nothing to insert: no error
    rows = BatchRows(epoch="sink-test")
    rows.priced.append(_priced(acc, 1, EDGE_TIMES[2], Decimal("10") ** 13))  # beyond Decimal(18, 6)
    rows.states[acc] = AccountState(acc)
    with pytest.raises(Exception, match="(?i)decimal|overflow|out of range|too large"):
        sink.send(client, sink.encode(rows), lanes)
    snapshots = client.query("SELECT count() FROM account_state WHERE account_id = {a:String}", parameters={"a": acc}).result_rows
    assert snapshots == [(0,)]
