"""Writes one batch's facts to ClickHouse: columnar inserts, deterministic rows, the snapshot as commit point.

Every row is keyed by identity and carries a revision taken from the account's sequence, so a
batch written twice (redelivery, replay, a retried insert) leaves the same current values. The
account snapshots are the commit point that a restart resumes from; the mutable aggregates
(bill lines, hour totals, rate windows) are written after them, so that no aggregate row ever
exists at an uncommitted revision (a background merge would otherwise collapse a line's
committed revision into it, and the roll-back of the failed unit would then delete both). Each
snapshot carries its unit's aggregate rows of that account as a redo (`REDO_TABLES`), which
`redo_inserts` writes again when the aggregates may not all have landed (statestore.roll_forward).
The aggregate bodies are first inserted into their Null-engine twins (`CHECK_TABLES`, migration
006), before the commit point: a value their columns refuse is refused there, and the worker's
isolation rejects its record (stream/isolation.py) instead of being stuck after the commit.

Two steps, so that the worker can overlap them: `encode` turns the batch into insert bodies in
the processor's thread (it reads the live account states, which the next unit will change), and
`send` hands the bodies to ClickHouse, which may run on another thread while the next unit is
parsed. The bodies are JSONCompactColumns made by orjson in C: clickhouse-connect's Native
encoder converts value by value in Python, and took two thirds of the worker's write time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import orjson
from clickhouse_connect.driver.client import Client

from pipeline.batch import aggregate_rows
from pipeline.batch.columns import decimal_texts, json_objects, seconds_from_micros, whole_seconds
from pipeline.core.facts import PricedUsage, Rejection, Settlement, StatusChange, Violation
from pipeline.core.state import LINE_COUNTS, AccountState, Line, LineKey, Window
from pipeline.core.windows import WindowKey


class RawRow(NamedTuple):
    """A raw_records row. The worker appends plain tuples in this field order, built by name by
    batch/rows.raw_row (a NamedTuple's constructor costs several times more, once per record)."""

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
    raw: list[tuple[Any, ...]] = field(default_factory=list)  # in RawRow's field order
    seen: list[tuple[Any, ...]] = field(default_factory=list)  # in SeenRow's field order
    priced: list[PricedUsage] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    lines: dict[tuple[str, LineKey], Line] = field(default_factory=dict)
    hour_totals: list[tuple[Any, ...]] = field(default_factory=list)  # in HOUR_TOTAL_FIELDS order (batch/changes.py)
    windows: dict[tuple[str, WindowKey], Window] = field(default_factory=dict)
    settlements: list[Settlement] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    states: dict[str, AccountState] = field(default_factory=dict)
    barriers: list[tuple[str, int]] = field(default_factory=list)
    progress: list[tuple[int, int]] = field(default_factory=list)  # (partition, last offset of the batch)


Column = tuple[str, str, Callable[[Sequence[Any]], list[Any]] | None]  # (ClickHouse column, field of the fact, column conversion)
INSERT_FORMAT = "JSONCompactColumns"  # one JSON array per column: [[c1 values], [c2 values], ...]
# Every table is a ReplacingMergeTree read with FINAL (or by the highest revision), so collapsing
# equal keys inside an insert block buys nothing: a batch's rows rarely repeat a key, and parts
# written by other inserts hold the same keys until a merge anyway. Skipping it measured 236-253
# against 293-326 ms for a 50,000-record unit's inserts on the embedded engine.
INSERT_SETTINGS = {"optimize_on_insert": 0}


class Insert(NamedTuple):
    table: str
    columns: list[str]
    body: bytes
    rows: int


@dataclass
class Encoded:
    """One batch's inserts as the steps of the commit protocol (`encode` says why): a step
    reaches ClickHouse only once every insert of the step before it is in; within a step the
    inserts are independent of each other."""

    steps: list[list[Insert]]
    records: int  # raw records in the batch

    @property
    def inserts(self) -> list[Insert]:
        """Every insert, in an order that keeps the protocol (the steps one after another)."""
        return [insert for step in self.steps for insert in step]


def _encode(
    table: str,
    items: Sequence[tuple[Any, ...]],
    columns: Sequence[Column],
    constants: dict[str, Any] | None = None,
    fields: Sequence[str] | None = None,
) -> list[Insert]:
    """Columnar body of facts (NamedTuples, or plain tuples with their `fields`): one C-level
    transpose, then only the columns that need a conversion are touched value by value, and
    orjson writes the JSON."""
    if not items:
        return []
    by_field = dict(zip(fields or items[0]._fields, zip(*items)))  # type: ignore[attr-defined]
    data: list[Sequence[Any]] = [by_field[source] if convert is None else convert(by_field[source]) for _, source, convert in columns]
    data += [[value] * len(items) for value in (constants or {}).values()]
    names = [name for name, _, _ in columns] + list(constants or {})
    return [Insert(table, names, orjson.dumps(data), len(items))]


def _named_alike(*names: str) -> list[Column]:
    """Columns whose values are the fields of the same names, unconverted."""
    return [(name, name, None) for name in names]


def millis_as_seconds(ms: int) -> float:
    """A DateTime64(3) value in JSON (exact for the reason columns.seconds_from_micros gives)."""
    return ms / 1000


class SeenRow(NamedTuple):
    """A seen_records row (plain tuples in this field order, built by batch/rows.seen_row)."""

    account_id: str
    record_id: str
    digest: str
    seq: int
    rid_hash: int  # records.record_hash(record_id)


class WindowRow(NamedTuple):
    """A rate_windows row (plain tuples in this field order, as RawRow)."""

    account_id: str
    kind: str
    window_start: int
    requests: int
    tokens: int
    revision: int


# A bill line's row: its key, then the fields of state.Line (named once, in state.LINE_COUNTS).
LINE_ROW_FIELDS = ("account_id", "hour", "api_key_id", "item", *LINE_COUNTS, "amount", "revision")


# A bill_hour_totals row (schemas/clickhouse/004_hour_totals.sql): an account-hour's totals over all its lines.
HOUR_TOTAL_FIELDS = (
    "account_id",
    "hour",
    "lines",
    "calls",
    "plugin_calls",
    "input_tokens",
    "output_tokens",
    "free_tokens",
    "billed_input_tokens",
    "billed_output_tokens",
    "plugin_units",
    "amount",
    "revision",
)


class StateRow(NamedTuple):
    """An account_state row (plain tuples in this field order): the snapshot, its redo, and its log
    position as columns, so that a worker taking a partition over finds the snapshots written past
    the partition's progress row without parsing every snapshot (statestore.roll_forward_partitions)."""

    account_id: str
    seq: int
    state: str
    redo: str  # JSON: {table: [row values in that table's field order]} for each table of REDO_TABLES; "" if none
    log_epoch: str
    log_partition: int
    log_offset: int


class ProgressRow(NamedTuple):
    partition: int
    offset: int


class BarrierRow(NamedTuple):
    barrier_id: str
    partition: int


def _col(name: str, source: str, convert: Callable[[Sequence[Any]], list[Any]] | None) -> Column:
    return (name, source, convert)


def _money_cols(*names: str) -> list[Column]:
    return [(name, name, decimal_texts) for name in names]


RAW: list[Column] = [_col("event_ts", "ts_us", seconds_from_micros)] + _named_alike(
    "partition", "offset", "idx", "account_id", "kind", "record_id", "payload"
)
SEEN: list[Column] = _named_alike(*SeenRow._fields)
PRICED: list[Column] = (
    [_col("hour", "hour_us", whole_seconds), _col("ts", "ts_us", seconds_from_micros), _col("plugins", "plugins", json_objects)]
    + _named_alike(
        "account_id",
        "event_id",
        "api_key_id",
        "model",
        "channel",
        "input_tokens",
        "output_tokens",
        "free_tokens",
        "billed_input_tokens",
        "billed_output_tokens",
        "flags",
        "seq",
    )
    + _money_cols("token_amount", "plugin_amount")
)
REJECTIONS: list[Column] = [_col("event_ts", "ts_us", seconds_from_micros), _col("record", "raw", None)] + _named_alike(
    "account_id", "record_id", "event_id", "kind", "reason", "detail", "seq"
)
VIOLATIONS: list[Column] = [
    _col("ts", "ts_us", seconds_from_micros),
    _col("limit_name", "limit", None),
    _col("window_start", "window_start_us", seconds_from_micros),
] + _named_alike("account_id", "event_id", "observed", "allowed", "seq")
WINDOWS: list[Column] = [_col("window_start", "window_start", seconds_from_micros)] + _named_alike(
    *(name for name in WindowRow._fields if name != "window_start")
)
LINES: list[Column] = [_col("hour", "hour", whole_seconds), _col("amount", "amount", decimal_texts)] + _named_alike(
    *(name for name in LINE_ROW_FIELDS if name not in ("hour", "amount"))
)
HOUR_TOTALS: list[Column] = [_col("hour", "hour", whole_seconds), _col("amount", "amount", decimal_texts)] + _named_alike(
    *(name for name in HOUR_TOTAL_FIELDS if name not in ("hour", "amount"))
)
SETTLEMENTS: list[Column] = (
    [_col("hour", "hour_us", whole_seconds)]
    + _named_alike("account_id", "kind", "seq")
    + _money_cols("amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after")
)
STATUS: list[Column] = (
    [_col("clock", "ts_us", seconds_from_micros)] + _named_alike("account_id", "status", "seq") + _money_cols("debt", "cash_balance")
)
STATES: list[Column] = _named_alike(*StateRow._fields)
PROGRESS: list[Column] = _named_alike(*ProgressRow._fields)
BARRIERS: list[Column] = _named_alike(*BarrierRow._fields)


# The mutable aggregates: keyed by account and line (hour, window), revision = the account seq of
# the last record that changed them, cumulative. A unit writes them after its snapshots, and each
# snapshot carries them as its redo: table -> (columns, field order of the rows, constants).
REDO_TABLES: dict[str, tuple[list[Column], tuple[str, ...], bool]] = {
    "bill_lines": (LINES, LINE_ROW_FIELDS, True),  # True: an `updated_at` column
    "bill_hour_totals": (HOUR_TOTALS, HOUR_TOTAL_FIELDS, True),
    "rate_windows": (WINDOWS, WindowRow._fields, False),
}


# Each aggregate table's check twin (migration 006): `CREATE TABLE t_check AS t ENGINE = Null`, the
# exact column types of `t`, storing nothing. A unit inserts the same body into it before its commit
# point, so a value the columns of `t` would refuse is refused before anything is committed. On a
# cluster the twins are plain local tables on every node (an insert is parsed where it is sent).
CHECK_TABLES: dict[str, str] = {table: f"{table}_check" for table in REDO_TABLES}


def _checks(inserts: Sequence[Insert]) -> list[Insert]:
    """The aggregate inserts again, into their check twins: the same columns and the same bytes."""
    return [Insert(CHECK_TABLES[insert.table], insert.columns, insert.body, insert.rows) for insert in inserts]


def _aggregate_inserts(tables: dict[str, list[tuple[Any, ...]]], now: float) -> list[Insert]:
    inserts: list[Insert] = []
    for table, table_rows in tables.items():
        columns, fields, stamped = REDO_TABLES[table]
        inserts += _encode(table, table_rows, columns, {"updated_at": now} if stamped else None, fields)
    return inserts


def encode(rows: BatchRows) -> Encoded:
    """Every insert of the batch, taken from the live states now (the next unit changes them).

    The order is the commit protocol (docs/architecture.md, step 5):
    1. the rows keyed by a record's identity, and the rows keyed by seq (raw records, seen ids,
       priced usage, rejections, violations, settlements, status changes). A row of one of them
       above its account's snapshot is removed by statestore.roll_back. A merge cannot collapse a
       committed row into one of a failed unit: raw_records is keyed by log position; seen_records,
       priced_usage and rate_violations by an identity the fold claims once; settlements and
       account_status by (account, seq[, hour]), different for every unit; rejections by record id,
       where a repeat of an already rejected record is rejected again by the retry, which writes
       the same row back;
    2. the aggregates' bodies into their Null twins (`CHECK_TABLES`): nothing is stored, but a value
       the aggregates' columns refuse is refused here, before the commit, so that the worker's
       isolation still pins it on its record, rejects it and billing goes on. After the commit
       only a transient failure can stop the unit, and the roll forward repairs that;
    3. the account snapshots with their redo: the commit point;
    4. the aggregates (bill lines, hour totals, rate windows), all at committed revisions: the same
       bodies as in 2;
    5. the partition progress rows, then the barriers: their presence says that everything of the
       unit before them is in (a snapshot past its partition's progress row is in doubt: its
       aggregates are written again from its redo, statestore.roll_forward_partitions).
    1 and 2 form one step of `Encoded.steps`, 4 another: the inserts within a step may run side by
    side (`InsertLanes`), the steps never do."""
    now = millis_as_seconds(int(time.time() * 1000))
    aggregates = {
        "bill_lines": aggregate_rows.line_rows(rows.lines),
        "bill_hour_totals": rows.hour_totals,
        "rate_windows": aggregate_rows.window_rows(rows.windows),
    }
    redo = aggregate_rows.redo_texts(aggregates)
    aggregate_inserts = _aggregate_inserts(aggregates, now)
    # one snapshot per account the unit touched, which on gateway traffic (one record per
    # message, 100,000 accounts) is nearly one per record
    states = aggregate_rows.state_rows(rows.states, redo)
    steps = [
        _encode("raw_records", rows.raw, RAW, {"epoch": rows.epoch, "received_at": now}, RawRow._fields)
        + _encode("seen_records", rows.seen, SEEN, None, SeenRow._fields)
        + _encode("priced_usage", rows.priced, PRICED)
        + _encode("rejections", rows.rejections, REJECTIONS, {"rejected_at": now})
        + _encode("rate_violations", rows.violations, VIOLATIONS)
        + _encode("settlements", rows.settlements, SETTLEMENTS, {"settled_at": now})
        + _encode("account_status", rows.status_changes, STATUS, {"changed_at": now})
        + _checks(aggregate_inserts),  # 1 and 2: a value the aggregates refuse is refused here, before the commit
        _encode("account_state", states, STATES, {"updated_at": now}, StateRow._fields),  # 3: the commit point
        aggregate_inserts,  # 4: at committed revisions only: a merge can lose nothing
        _encode("partition_progress", [ProgressRow(*p) for p in rows.progress], PROGRESS, {"epoch": rows.epoch}),  # 5
        _encode("barriers", [BarrierRow(*b) for b in rows.barriers], BARRIERS, {"processed_at": now}),
    ]
    return Encoded([step for step in steps if step], len(rows.raw))


def redo_inserts(redos: Iterable[str]) -> list[Insert]:
    """The aggregate rows of committed snapshots' redos, as inserts: the same rows at the same
    revisions as their units wrote (or meant to), so writing them again changes no current value."""
    tables: dict[str, list[tuple[Any, ...]]] = {table: [] for table in REDO_TABLES}
    for text in redos:
        if not text:  # a unit that changed no aggregate of the account, or a snapshot from before migration 005
            continue
        for table, table_rows in orjson.loads(text).items():
            tables[table] += [tuple(row) for row in table_rows]
    return _aggregate_inserts(tables, millis_as_seconds(int(time.time() * 1000)))


def insert_all(client: Client, inserts: Sequence[Insert]) -> None:
    """The inserts in order; any failure stops there."""
    for insert in inserts:
        client.raw_insert(insert.table, insert.columns, insert.body, settings=INSERT_SETTINGS, fmt=INSERT_FORMAT)


def send(client: Client, encoded: Encoded, lanes: "InsertLanes | None" = None) -> None:
    """A unit's inserts, step after step; with `lanes`, a step's inserts run side by side. A failure
    before the snapshots (a value refused by the aggregates' check twins among them) leaves nothing
    committed, one after them (transient: the values passed the checks) leaves accounts in doubt
    that the processor rolls forward. Either way no insert of the unit is still running when the
    failure is raised, and none of a later step has started."""
    for step in encoded.steps:
        if lanes is not None and len(step) > 1:
            lanes.insert_all(step)
        else:
            insert_all(client, step)


def insert_lanes(connect: Callable[[], Client], lanes: int) -> "InsertLanes | None":
    """The lanes `BILLING_INSERT_LANES` asks for: None for 1 (one after another on the caller's
    client: no thread, no other client)."""
    return InsertLanes(connect, lanes) if lanes > 1 else None


class InsertLanes:
    """Side-by-side inserts, each lane a thread with a client of its own (a client serializes its
    calls; chdb allows any number of handles to the one engine of a process, and a server any
    number of sessions). An insert's cost is mostly fixed (the engine's query and part set-up:
    measured 6.5 ms for a one-row insert into an idle embedded engine, against 2.4 ms into a
    Null table), and a unit makes up to 14 of them, so a small unit's write is mostly that fixed
    cost paid in series. Measured on this 2-core machine with the embedded engine (3 lanes against
    none): the engine's wait per batch a quarter to a third shorter, the processor alone 19-42%
    faster on gw_100k, but the worker end to end no faster (gw_1m 9,413 against 10,928 records/s
    in one pair): the lanes' CPU comes out of the folding thread's. So they are off by default
    (`BILLING_INSERT_LANES`, docs/operations.md): worth it where inserts wait rather than compute,
    as round trips to a ClickHouse server do."""

    def __init__(self, connect: Callable[[], Client], lanes: int) -> None:
        self._connect = connect
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(lanes, 1), thread_name_prefix="billing-insert")

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
            with self._lock:
                self._clients.append(client)
        return client

    def _insert(self, insert: Insert) -> None:
        insert_all(self._client(), [insert])

    def insert_all(self, inserts: Sequence[Insert]) -> None:
        """The inserts side by side; once all have ended, the first failure (in their order) is raised."""
        futures = [self._pool.submit(self._insert, insert) for insert in inserts]
        wait(futures)
        for future in futures:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
