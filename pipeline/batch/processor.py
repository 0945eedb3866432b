"""The batch edge around the fold: bytes from the log in, ClickHouse rows out, nothing twice.

Framework-free on purpose: the Faust agent, the tests and a rebill all drive `process` with
plain messages. Per unit of a batch it loads the accounts' snapshots and working sets, skips
records it has already applied (same log epoch, partition, offset at or below the account's
position), folds the rest in log order and writes every fact of the unit in one go, beside the
next unit's fold. States that ran ahead of a write that failed are dropped and reloaded.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import orjson
from clickhouse_connect.driver.client import Client

from pipeline.batch import topic_json
from pipeline.batch.changes import collect_changed
from pipeline.batch.framing import RS, split_message
from pipeline.batch.rows import raw_row, seen_row
from pipeline.core import control
from pipeline.core.catalog import Catalog
from pipeline.core.facts import OUT_OF_RANGE, Outcome, StatusChange, Violation
from pipeline.core.fold import apply, is_api_call
from pipeline.core.records import UNKEYED, AccountRecord, Invalid, Record, Usage, new_invalid, parse_record, set_aside
from pipeline.core.settlement import hour_closed
from pipeline.core.state import AccountState, Instants, with_instant
from pipeline.core.timestamps import US_PER_HOUR, US_PER_MINUTE, hour_start, parse_ts
from pipeline.core.windows import minute_start
from pipeline.settings import DEFAULTS
from pipeline.store.sink import BatchRows
from pipeline.store.storage import ClickHouseStorage, Storage
from pipeline.stream.gcpause import gc_paused, park_survivors

log = logging.getLogger(__name__)
BARRIER_TYPE = control.BARRIER
KEEP_HOURS_US = US_PER_HOUR  # open hours kept in memory behind an account's latest event
KEEP_MINUTES_US = 2 * US_PER_MINUTE
# at most one look for idle rate windows per this many seconds: a backlog moves event time by an
# hour in seconds, and each look walks the whole cache (measured 2% of gw_100k when every batch looked)
SHED_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class ClockBounds:
    """How far ahead a record may be and still move its partition's event time (the auto ticks
    that settle idle accounts): of the wall clock, and of its own account's latest record."""

    max_future_us: int = 3600 * 1_000_000
    max_jump_us: int = 86_400 * 1_000_000


class OffsetGap(Exception):
    """Input offsets skipped records that were never applied: billing around the hole would lose
    money silently, so the worker stops; a restart resumes from the committed offset."""


class EarlierWriteFailed(Exception):
    """The last write of the previous batch, left in flight by `process(..., leave_last_write=True)`,
    failed. Nothing of this batch was written (what it folded is dropped); the accounts of both
    batches are reloaded. The previous batch must be processed again before this one (its
    `written` future holds the failure, which is how its owner learns it)."""


# __init__ by hand, as state.Line's: compiled, a dataclass's generated __init__ stays interpreted
# (a frozen one sets each field through object.__setattr__), and the worker makes one per message.
@dataclass(slots=True, init=False)
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a tombstone, which any producer can send (rejected, never a crash)
    headers: tuple[tuple[str, bytes], ...]  # Kafka headers; `billing publish` names a line it could not read

    def __init__(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()
    ) -> None:
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers


def message_headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """A consumed message's headers (a list of pairs, a mapping, or None) as Message holds them."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return tuple((str(k), v if isinstance(v, bytes) else b"") for k, v in pairs)


def _origin(headers: tuple[tuple[str, bytes], ...]) -> str:
    """Where `billing publish` read a record it could not read as one (publish.origin_headers):
    "line N of SOURCE[; N bytes as read, kept cut short]", or "" for a message without them."""
    found = {k: v[:200].decode("utf-8", errors="replace") for k, v in headers}
    line = found.get("billing-line", "")
    if not (line.isascii() and line.isdigit()):
        return ""
    size = found.get("billing-size", "")
    cut = f"; {size} bytes as read, kept cut short" if size.isascii() and size.isdigit() else ""
    return f"line {line} of {found.get('billing-source', '-')}{cut}"


@dataclass
class BatchResult:
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    rejected_ids: list[tuple[str, str, str]] = field(default_factory=list)  # (account, record id, reason): metrics count each once
    skipped: int = 0  # redeliveries of records already applied
    unkeyed: int = 0  # records refused for coming in a message without a key (records.UNKEYED)
    barriers: int = 0
    last_offsets: dict[int, int] = field(default_factory=dict)
    states: dict[str, AccountState] = field(default_factory=dict)  # accounts this batch changed
    status_changes: list[StatusChange] = field(default_factory=list)  # for the status topic
    violations: list[Violation] = field(default_factory=list)  # for the violations topic
    ticks: list[tuple[str, int]] = field(default_factory=list)  # (account, clock) to publish for idle accounts
    outbound: list[topic_json.Outbound] = field(default_factory=list)  # the three above as messages, once the batch is done
    write_wait_s: float = 0.0  # time the folding thread waited for ClickHouse to finish a unit's write
    # the folding thread's seconds by phase (PHASES): where a batch's time goes, for the benches
    phase_s: dict[str, float] = field(default_factory=dict)
    written: "Future[None]" = field(default_factory=lambda: _done())  # resolves once every row of the batch is in ClickHouse

    def merge(self, other: "BatchResult") -> None:
        """Add a later unit of the same batch."""
        self.statuses.update(other.statuses)
        self.reasons.update(other.reasons)
        self.rejected_ids += other.rejected_ids
        self.skipped += other.skipped
        self.unkeyed += other.unkeyed
        self.barriers += other.barriers
        for partition, offset in other.last_offsets.items():
            self.last_offsets[partition] = max(offset, self.last_offsets.get(partition, -1))
        self.states.update(other.states)
        self.status_changes += other.status_changes
        self.violations += other.violations
        self.ticks += other.ticks
        self.outbound += other.outbound
        self.write_wait_s += other.write_wait_s
        for phase, seconds in other.phase_s.items():
            _add(self.phase_s, phase, seconds)


def _done() -> "Future[None]":
    future: Future[None] = Future()
    future.set_result(None)
    return future


# The folding thread's phases (BatchResult.phase_s): parsing the messages, waiting for the unit's
# reads, encoding the unit before (store/sink.py), folding and collecting the rows, then once per
# batch the outgoing messages and the prune of the working sets. What is left of a batch's time
# is the wait for its writes (write_wait_s).
PHASES = ("parse", "read_wait", "encode", "fold", "outbound", "prune")


def _add(phases: dict[str, float], phase: str, seconds: float) -> None:
    phases[phase] = phases.get(phase, 0.0) + seconds


def _units(messages: list[Message], max_records: int) -> Iterator[list[Message]]:
    """Consecutive runs of whole messages, as few as hold at most `max_records` records each (a
    message with more is a unit of its own), and about the same size: a small last unit would be
    folded in less time than the write of the unit before it takes, and wait for it."""
    sizes = [msg.value.count(RS) if msg.value is not None and msg.value.startswith(RS) else 1 for msg in messages]
    total = sum(sizes)
    target = -(-total // max(1, -(-total // max_records)))  # total / ceil(total / max), rounded up
    unit: list[Message] = []
    count = 0
    for msg, records in zip(messages, sizes):
        if unit and (count >= target or count + records > max_records):
            yield unit
            unit, count = [], 0
        unit.append(msg)
        count += records
    if unit:
        yield unit


def barrier_message(barrier_id: str, control_key: bytes) -> bytes:
    return control.signed_bytes({"type": BARRIER_TYPE, "barrier_id": barrier_id}, control_key)


def _barrier_id(value: bytes | None, control_key: bytes | None) -> str | None:
    """The id of a barrier signed by the pipeline's tools; anything else claiming to be one is
    parsed as a record (and rejected as unauthorized)."""
    if value is None or not value.startswith(b'{"type":"' + BARRIER_TYPE.encode()):
        return None
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("barrier_id"), str) or not control.verify(body, control_key):
        return None
    return str(body["barrier_id"])


_CLOCK_BITS = 64  # event times are validated to 2000-2100, below 2**52 us
_CLOCK_MASK = (1 << _CLOCK_BITS) - 1


def _asleep(partition: int, first_open: int, clock: int) -> int:
    """An evicted account's partition, earliest open hour and clock (all >= 0) as one int."""
    return (((partition << _CLOCK_BITS) | first_open) << _CLOCK_BITS) | clock


def _rebilled_hours(record: AccountRecord) -> list[int]:
    """Bill hours whose lines an account record may change (a rebill's): they must be in memory
    before the fold, as a usage record's hour must."""
    if record.kind == "rebill.lines":
        return sorted({hour_start(parse_ts(line["hour"])) for line in record.fields["lines"]})
    return []


def _unwritable(record: Record, error: str) -> Invalid:
    """A record of a message ClickHouse refused to write, rejected with the error (`out_of_range`:
    a value the tables cannot hold that the fold's own checks did not foresee)."""
    detail = f"ClickHouse refused to write this record's message ({error[:500]}); it was rejected so that billing goes on"
    event_id = record.event_id if isinstance(record, (Usage, Invalid)) else ""
    return new_invalid(
        account_id=record.account_id,
        identity="raw:" + record.identity,
        raw=record.raw,
        detail=detail,
        event_id=event_id,
        ts_us=record.ts_us,
        kind=record.kind,
        reason=OUT_OF_RANGE,
    )


def yield_gil() -> None:
    """Offer the GIL to the sink thread. Compiled code never does on its own (only the bytecode
    loop honours a switch request): measured, a submitted write waited 80-140 ms to start,
    until this thread next ran interpreted code."""
    time.sleep(0)


class WriteBehind:
    """At most one unit's write in flight, on the processor's sink thread. A failed write is raised
    where it is next waited for; the batch then forgets every account it touched. It starts with
    the previous batch's last write when that was left in flight."""

    def __init__(self, pool: ThreadPoolExecutor, storage: Storage, earlier: "Future[None] | None" = None) -> None:
        self._pool = pool
        self._storage = storage
        self._in_flight = earlier
        self._earlier = earlier is not None
        self.waited_s = 0.0

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def submit(self, encoded: Any) -> None:
        self.settle()
        self._in_flight = self._pool.submit(self._storage.send, encoded)
        yield_gil()  # the sink thread starts now, not when this thread next runs interpreted code

    def settle(self) -> None:
        """Wait for the write in flight; raise its failure (EarlierWriteFailed for the previous batch's)."""
        future, self._in_flight = self._in_flight, None
        earlier, self._earlier = self._earlier, False
        if future is None:
            return
        started = time.perf_counter()
        try:
            future.result()
        except Exception as exc:
            if earlier:
                raise EarlierWriteFailed(f"the previous batch's last write failed: {exc!r}") from exc
            raise
        finally:
            self.waited_s += time.perf_counter() - started

    def detach(self) -> "Future[None]":
        """Leave the write in flight to the caller (the batch's `written`)."""
        future, self._in_flight = self._in_flight, None
        return future if future is not None else _done()

    def abandon(self) -> None:
        """Something else failed: still wait for the write (the batch will be retried and must
        not race it)."""
        try:
            self.settle()
        except BaseException as exc:  # the first failure is the one raised
            log.warning("a unit's write also failed: %r", exc)


class BatchProcessor:
    """Owns the in-memory account states of the partitions this worker holds."""

    def __init__(
        self,
        client: Client,
        catalog: Catalog,
        epoch: str,
        auto_tick: bool = True,
        write_records: int = DEFAULTS.write_records,
        control_key: bytes | None = None,
        clock_bounds: ClockBounds | None = None,
        max_cached_accounts: int = DEFAULTS.max_cached_accounts,
        storage: Storage | None = None,
    ) -> None:
        self.client = client
        # every read and write of the store (store/storage.py); ClickHouse on `client` unless given
        self.storage: Storage = storage if storage is not None else ClickHouseStorage(client)
        self.control_key = control_key  # None: no control record is accepted (and no tick is sent)
        self.clock_bounds = clock_bounds or ClockBounds()
        self.write_records = max(write_records, 1)
        self.catalog = catalog
        self.epoch = epoch
        self.states: dict[str, AccountState] = {}
        self._hours: dict[str, Instants] = {}
        self._minutes: dict[str, Instants] = {}
        self.watermarks: dict[int, int] = {}  # partition -> latest event time applied (us)
        self._next_offset: dict[int, int] = {}  # partition -> the offset the next message must have
        self.auto_tick = auto_tick
        self._ticked: dict[str, int] = {}
        self.max_cached_accounts = max(max_cached_accounts, 1)
        # accounts evicted from memory with hours still open, so that the partition's event time
        # still settles them (a tick loads them again): each one's sleep (`_asleep`: partition,
        # earliest open hour and clock in one int), and the accounts by (partition, that hour), so
        # that a unit looks only at the hours its event time has closed, not at every sleeping
        # account (a million after gw_1m: 0.1-0.3 s a unit). Ints, not tuples: the collector walks
        # a tuple per sleeper in each full collection (stream/gcpause.py), an int it never sees.
        self._sleeping: dict[str, int] = {}
        self._sleepers: dict[tuple[int, int], list[str]] = {}  # may name accounts awake since: checked against _sleeping
        # messages ClickHouse refused to write, found by the worker's isolation of a failing batch:
        # (partition, offset) -> the error; their records are rejected instead of applied
        self.poisoned: dict[tuple[int, int], str] = {}
        self._grace_us = catalog.settlement_grace_us
        # one sink and one reader thread for the processor's life (they end when the processor is
        # collected or closed); the last write of a batch may still run when `process` returns
        self._sink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="billing-sink")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="billing-reader")
        self._last_write: Future[None] | None = None  # left in flight by the previous batch
        self._last_touched: set[str] = set()  # that batch's accounts, reloaded if the write fails
        # accounts whose working sets (seen ids, old hours and minutes) are pruned only once their
        # batch's last write is in: until then a unit may read beside that write (`_reads_beside`).
        # Empty unless the storage reads beside writes: otherwise a batch prunes at its end.
        self._unpruned: set[str] = set()
        # accounts whose committed snapshot may lack its aggregates and whose roll forward failed
        # (ClickHouse away): rolled forward before they are loaded again (`_recover`)
        self._in_doubt: set[str] = set()
        # idle accounts' rate windows are dropped once a minute of event time, at most every
        # `shed_every_s` seconds (`_shed_idle_windows`)
        self.shed_idle = True
        self.shed_every_s = SHED_EVERY_S
        self._shed_at = 0  # the event time of the last look
        self._shed_wall = 0.0  # and its time.monotonic()
        self.placement: Any = None  # a partitioning.PlacementCheck: records on their key's partition, or stop
        self._aside: dict[tuple[int, int], int] = {}  # this batch's messages set aside: (partition, offset) -> their key's partition

    def wait_for_writes(self) -> None:
        """Block until no write is in flight (a read beside a write could miss its rows). A failure
        is not raised here: the next `process` raises it, and the batch's `written` holds it."""
        if self._last_write is not None:
            wait([self._last_write])

    def read_between_writes(self, read: Callable[[], Any]) -> "Future[Any]":
        """`read` on the sink thread, after every write submitted before it and before any
        submitted after: it sees each unit whole and every unit written before the call, and it
        leaves the folding thread alone. (On the folding thread it waited there for the write in
        flight, which the next batch would have parsed beside: the worker's API, `billing wait`
        among its callers, cost every batch that overlap.) RuntimeError once closed."""
        return self._sink.submit(read)

    def close(self) -> None:
        """Wait for the write in flight and end the sink and reader threads."""
        self.wait_for_writes()
        self._sink.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    def _recover(self, accounts: set[str]) -> None:
        """Repair what a failed batch left in ClickHouse, before its retry reads anything.

        A unit's write (store/sink.py encode) puts the account snapshots, the commit point, before
        the mutable aggregates (bill lines, hour totals, rate windows), and each snapshot carries
        its unit's aggregate rows of that account as a redo. So a write that stopped anywhere
        leaves each account either uncommitted (rows past its snapshot: roll back) or committed
        but "in doubt" (the snapshot in, its aggregates maybe not: roll forward). The rule:

        1. Roll back: delete every row past each touched account's committed snapshot seq. No
           aggregate row is ever written past it, so a merge can have collapsed nothing committed.
        2. Roll forward: write each touched account's committed snapshot's redo again (same keys,
           revisions and values; a row already in changes nothing).
        3. If the roll forward fails (ClickHouse away), remember the accounts in `_in_doubt`; the
           next read of any of them rolls them forward first (`_load_states`, before `_hydrate`
           loads their lines), and raises if it fails again: the batch then fails and is retried,
           and nothing is ever folded on top of an account whose aggregates may be missing.
        4. A crash (or a worker losing the partition) leaves no memory of this: a worker taking
           a partition (`check_contiguous`, first sight) rolls forward every snapshot written past
           the partition's progress row, which a unit writes after its aggregates.
        5. The retry folds only what no committed snapshot holds (`_drop_applied`).
        6. The commit cannot be taken back (the snapshot before it, and the aggregates' older
           revisions, may already be merged away), so a value ClickHouse refuses must never reach
           the aggregates after it: the unit inserts their bodies into their Null-engine twins
           (sink.CHECK_TABLES, the same column types) before the snapshots. A refused value fails
           the unit before its commit (step 1 deletes what it wrote), and the worker's isolation
           pins it on its record and rejects it, so billing goes on. What can still fail after the
           commit is transient (ClickHouse away), and steps 2-4 repair it; if a redo were refused
           all the same, the accounts would stay in doubt and the worker would report itself stuck."""
        if not accounts:
            return
        try:
            self.storage.roll_back(accounts)
        except Exception as exc:  # ClickHouse away: the retry rewrites the same rows anyway
            log.warning("could not roll back the failed batch's rows (%r); its retry overwrites them", exc)
        try:
            self._roll_forward(accounts)
        except Exception as exc:  # rolled forward before the accounts are read again
            log.warning("could not roll forward the failed batch's accounts (%r); they will be before they are next loaded", exc)
            self._in_doubt |= accounts

    def _roll_forward(self, accounts: Iterable[str]) -> None:
        """Step 2 of `_recover`; raises if it fails (the accounts stay in doubt)."""
        self.storage.roll_forward(sorted(accounts))

    def _roll_forward_in_doubt(self, accounts: list[str]) -> None:
        """Step 3 of `_recover`: before these accounts' states and lines are read; raises if it fails."""
        doubtful = [acc for acc in accounts if acc in self._in_doubt]
        if doubtful:
            self._roll_forward(doubtful)
            self._in_doubt.difference_update(doubtful)

    def reset_positions(self) -> None:
        """After a rebalance: the next batch of each partition is checked against partition_progress again."""
        self._next_offset.clear()

    def check_contiguous(self, messages: list[Message]) -> None:
        """Each partition's offsets must continue where this log's records were applied up to. A
        partition seen for the first time is first rolled forward (`_recover`, step 4)."""
        firsts: dict[int, int] = {}
        for msg in messages:
            firsts.setdefault(msg.partition, msg.offset)
        unknown = [p for p in firsts if p not in self._next_offset]
        if unknown:  # first sight (a start, a rebalance): first finish what a crashed unit left in doubt (`_recover`, step 4)
            rolled = self.storage.roll_forward_partitions(sorted(unknown))
            if rolled:
                log.info("partitions %s: rolled forward %d account snapshots written past their progress rows", sorted(unknown), rolled)
            applied = self.storage.processed_offsets(self.epoch, unknown)
            for p in unknown:
                self._next_offset[p] = applied.get(p, -1) + 1
        for msg in messages:
            expected = self._next_offset[msg.partition]
            if msg.offset > expected:
                raise OffsetGap(
                    f"partition {msg.partition}: got offset {msg.offset} but offsets from {expected} were never applied "
                    f"(log epoch {self.epoch!r}); stopping instead of billing around the gap. Restart the worker: it "
                    "resumes from the committed offset. If those offsets are gone for good, reset the consumer group "
                    "to re-read them."
                )
            self._next_offset[msg.partition] = max(expected, msg.offset + 1)

    def forget(self, accounts: Iterable[str] | None = None) -> None:
        """Drop cached states (all, or some): they are reloaded from ClickHouse when next needed."""
        if accounts is None:
            self._sleeping.clear()  # the partitions may be another worker's now
            self._sleepers.clear()
            self._unpruned.clear()
        for acc in list(self.states) if accounts is None else list(accounts):
            self.states.pop(acc, None)
            self._hours.pop(acc, None)
            self._minutes.pop(acc, None)

    def process(self, messages: list[Message], leave_last_write: bool = False) -> BatchResult:
        """Fold and write a batch, in units of at most `write_records` records (whole messages):
        a batch of 1,000 messages can hold 200,000 records, and one unit's working memory and
        the time a query of the worker's API waits behind its write grow with it. Offsets are acknowledged
        after the whole batch; a crash between units redelivers it, and the units already
        written are skipped.

        Write-behind: ClickHouse ingests a unit (in C, without the GIL, on the sink thread)
        while the next unit is folded. A unit's rows are encoded while the next unit's reads
        (working sets, snapshots, outputs to publish again) run on the reader thread, and handed
        over after those reads. The reads run beside the write still in flight only where
        nothing they read can be in it (`_reads_beside`; with a storage whose reads have a client
        of their own), else after it; either way they find the effects of the units not yet
        written in memory, where everything a batch touched stays until its last write is in
        (the prune waits for that: `_unpruned`).

        By default the batch returns once its last unit is written. With `leave_last_write` it
        returns with that write in flight (`result.written` resolves when it is in), and the next
        batch parses its first unit beside it before any read; the caller acknowledges the batch
        only once `written` has resolved. If that write fails, the next `process` raises
        EarlierWriteFailed without writing anything."""
        # before anything is folded (issue 21: partitions added, foreign partitioners); what it lets
        # through misplaced was set aside by an operator, and is refused in `_parse`
        self._aside = self.placement.check(messages) if self.placement is not None else {}
        if self._aside:
            log.warning(
                "set aside (BILLING_SET_ASIDE): %s, on a partition their key does not map to; their records are rejected and kept",
                ", ".join(f"partition {p} offset {o} (its key's partition: {q})" for (p, o), q in sorted(self._aside.items())),
            )
        result = BatchResult()
        touched: set[str] = set()
        earlier, earlier_touched = self._last_write, self._last_touched
        self._last_write, self._last_touched = None, set()
        behind = WriteBehind(self._sink, self.storage, earlier)
        held: BatchRows | None = None  # a unit's rows, folded but not yet encoded and handed to ClickHouse
        try:
            with gc_paused():  # for the whole batch: a collection between units holds the GIL for tens of ms
                for unit in _units(messages, self.write_records):
                    held = self._process(unit, behind, held, result, touched, earlier_touched)
                if held is not None:
                    started = time.perf_counter()
                    encoded = self.storage.encode(held)
                    _add(result.phase_s, "encode", time.perf_counter() - started)
                    behind.submit(encoded)  # (after the write in flight)
                    held = None
                else:
                    behind.settle()  # an empty batch still waits for the previous batch's write
                # while the last write runs (this thread would only wait): the outgoing messages,
                # and the batch's survivors parked out of the collector's way
                started = time.perf_counter()
                result.outbound = topic_json.messages(result.status_changes, result.violations, self._signed_ticks(result.ticks))
                _add(result.phase_s, "outbound", time.perf_counter() - started)
                park_survivors()
                if not leave_last_write:
                    behind.settle()
        except BaseException:
            behind.abandon()
            # in-memory states ran ahead of what ClickHouse holds: reload them next time, and take
            # back what the failed units wrote past the commit points (no query sees it after this)
            failed = touched | earlier_touched
            self.forget(failed)
            self._recover(failed)
            raise
        started = time.perf_counter()
        self._keep_recent(touched)
        # every write before this batch's last is in: their accounts' working sets can go now. The
        # last one's wait for it only where the next batch may read beside it (`_reads_beside`).
        defer = leave_last_write and self.storage.reads_beside_writes
        earlier_done, self._unpruned = (self._unpruned - touched, touched) if defer else (self._unpruned | touched, set())
        self._prune(earlier_done)
        self._evict()
        if self.shed_idle:
            self._shed_idle_windows(touched, earlier_touched, self._unpruned)
        _add(result.phase_s, "prune", time.perf_counter() - started)
        result.write_wait_s = behind.waited_s
        if leave_last_write:
            result.written = self._last_write = behind.detach()
            self._last_touched = touched
        return result

    def _process(
        self,
        messages: list[Message],
        behind: WriteBehind,
        held: BatchRows | None,
        batch: BatchResult,
        touched: set[str],
        earlier_touched: set[str],
    ) -> BatchRows:
        """One unit: its reads, on the reader thread while this one encodes the previous unit's
        rows; then that unit's write handed over, and this unit's fold beside it. Returns this
        unit's rows, held for the next unit (or the batch's end)."""
        result = BatchResult()
        phases = result.phase_s
        rows = BatchRows(epoch=self.epoch)
        started = time.perf_counter()
        by_account = self._parse(messages, rows, result)  # overlaps the write of the unit before the held one
        _add(phases, "parse", time.perf_counter() - started)
        beside = self._reads_beside(behind, result.last_offsets, by_account, touched, earlier_touched)
        if not beside:
            behind.settle()
        self._make_room(by_account, touched)
        reads = self._reader.submit(self._read, messages, by_account, result)
        started = time.perf_counter()
        try:
            encoded = self.storage.encode(held) if held is not None else None
        finally:
            encoded_at = time.perf_counter()
            wait([reads])  # never leave a read running behind a failure
        pending, republished = reads.result()
        folding = time.perf_counter()
        _add(phases, "encode", encoded_at - started)
        _add(phases, "read_wait", folding - encoded_at)
        touched.update(pending)
        if encoded is not None:
            behind.submit(encoded)
        placed = self.placement if self.placement is not None and self.placement.partitions > 1 else None
        for acc, items in pending.items():
            state = self.states[acc]
            seq_before = state.seq
            clock_before = state.max_ts_us
            for msg, idx, record in items:
                self._collect(rows, state, msg, idx, record, apply(state, record, self.catalog), result)
                # an account's position is in its own partition's log (what `_drop_applied` skips by): a
                # record refused for where its message was (no key, another account's key, set aside) came
                # on another partition and leaves it alone, or a redelivery of the account's own records
                # would not be known as one (folded again as duplicates, their outputs never sent again).
                # Only a refused record can be elsewhere (the placement check passed the rest), so only
                # its account's partition is computed.
                if (
                    placed is None
                    or not isinstance(record, Invalid)
                    or msg.partition == placed.expected(acc.encode("utf-8", "surrogatepass"))
                ):
                    state.log_epoch, state.log_partition, state.log_offset = self.epoch, msg.partition, msg.offset
                ts_us = record.ts_us
                if ts_us is not None and ts_us > self.watermarks.get(msg.partition, 0):
                    self._advance_watermark(msg.partition, ts_us, clock_before)
                clock_before = state.max_ts_us
            # its changed lines and windows, and the console's per account-hour totals (bill_hour_totals)
            self._hours[acc], self._minutes[acc] = collect_changed(rows, state, seq_before, self._hours[acc], self._minutes[acc])
            rows.states[acc] = state
        _add(phases, "fold", time.perf_counter() - folding)
        rows.progress = sorted(result.last_offsets.items())
        result.states = rows.states
        result.status_changes = republished[0] + rows.status_changes
        result.violations = republished[1] + rows.violations
        if self.auto_tick:
            result.ticks = self._idle_ticks()
        batch.merge(result)
        return rows

    def _reads_beside(
        self,
        behind: WriteBehind,
        partitions: Iterable[int],
        by_account: dict[str, list[tuple[Message, int, Record]]],
        touched: set[str],
        earlier_touched: set[str],
    ) -> bool:
        """May this unit's reads run beside the write in flight (the unit before, or the previous
        batch's last)? They may when nothing they read can be in that write:
        - every account they load from ClickHouse has no row in it: an account written by this
          batch or the previous one is read only from memory (an evicted one settles the write
          first);
        - for every account in memory, what the write holds of it (the ids it claimed, the hours
          and minutes it changed) is still in memory, so no read asks for it: the working sets of
          a batch's accounts are pruned only once its last write is in (`_unpruned`);
        - nothing is written: no partition seen for the first time (`check_contiguous` rolls it
          forward) and no account left in doubt (rolled forward before it is read).
        Otherwise the write settles first, as every read did before (a read beside a write that
        holds what it asks for would miss it). The engine then parses the write on the second core
        while the reads and the encoding run, instead of the folding thread waiting for it."""
        if not behind.in_flight or not self.storage.reads_beside_writes or self._in_doubt:
            return False
        known = self._next_offset
        if any(p not in known for p in partitions):  # the unit's partitions, not each message's
            return False
        states = self.states
        return not any(acc not in states and (acc in touched or acc in earlier_touched) for acc in by_account)

    def _read(
        self, messages: list[Message], by_account: dict[str, list[tuple[Message, int, Record]]], result: BatchResult
    ) -> tuple[dict[str, list[tuple[Message, int, Record]]], tuple[list[StatusChange], list[Violation]]]:
        """A unit's reads, on the reader thread (the engine answers without Python's lock): where its
        partitions stand, its accounts' snapshots and working sets, the outputs to publish again.
        Meanwhile the folding thread only encodes the previous unit's rows: those read the durable
        fields of the states and the lines and windows that unit changed, and these reads touch
        neither (they add snapshots of accounts not in memory, and identities, lines and windows
        of hours and minutes not in memory). Returns the records to apply, by account."""
        self.check_contiguous(messages)
        self._load_states(by_account)
        pending, applied = self._drop_applied(by_account, result)
        republished = self._republished(applied)
        self._hydrate(pending)
        return pending, republished

    def _parse(self, messages: list[Message], rows: BatchRows, result: BatchResult) -> dict[str, list[tuple[Message, int, Record]]]:
        """Records by account, in log order; barriers go straight to the rows. Reads no state."""
        by_account: dict[str, list[tuple[Message, int, Record]]] = {}
        # keys keep an account's records in order only where there is more than one partition
        require_key = self.placement is not None and self.placement.partitions > 1
        for msg in messages:
            result.last_offsets[msg.partition] = max(msg.offset, result.last_offsets.get(msg.partition, -1))
            barrier = _barrier_id(msg.value, self.control_key)
            if barrier is not None:
                rows.barriers.append((barrier, msg.partition))
                result.barriers += 1
                continue
            key_account = msg.key.decode("utf-8", errors="replace") if msg.key else ""
            refused = self.poisoned.get((msg.partition, msg.offset)) if self.poisoned else None
            belongs = self._aside.get((msg.partition, msg.offset)) if self._aside else None
            origin = _origin(msg.headers) if msg.headers else ""  # such a message holds one record, as read
            values: list[bytes | None] = [msg.value] if origin or msg.value is None else [*split_message(msg.value)]
            for idx, value in enumerate(values):
                record = parse_record(value, key_account, self.control_key, require_key=require_key)
                if require_key and not key_account and isinstance(record, Invalid) and record.detail == UNKEYED:
                    result.unkeyed += 1
                if origin and isinstance(record, Invalid):
                    record = record._replace(detail=f"{record.detail} ({origin})")
                if belongs is not None:
                    record = set_aside(value or b"", record, msg.partition, belongs)
                elif refused is not None:
                    record = _unwritable(record, refused)
                items = by_account.get(record.account_id)
                if items is None:  # not setdefault: that builds an empty list for every record
                    items = by_account[record.account_id] = []
                items.append((msg, idx, record))
        return by_account

    def warm(self, owned: Callable[[str], bool] | None = None) -> int:
        """Fill the free room of the cache with the committed snapshots of the accounts written most
        recently (those `owned` says this worker holds, if given); returns how many. A restarted
        worker otherwise meets its first batches with an empty cache and loads every account's
        snapshot there, on the batches' path (the processor alone on gw_100k, 100,000 accounts:
        16,500-18,200 records/s warm against 14,900-16,500 cold); the worker warms while it joins
        its group, which takes seconds anyway. Between batches, after any write in flight (a
        snapshot loaded beside it could miss it); accounts left in doubt are loaded by their next
        batch, after their roll forward (`_recover`)."""
        self.wait_for_writes()
        room = self.max_cached_accounts - len(self.states)
        if room <= 0:
            return 0
        warmed = 0
        for acc, state in self.storage.load_recent_states(room).items():
            if warmed == room:
                break
            if acc in self.states or acc in self._in_doubt or (owned is not None and not owned(acc)):
                continue
            self._sleeping.pop(acc, None)
            self.states[acc] = state
            self._hours[acc] = ()
            self._minutes[acc] = ()
            warmed += 1
        return warmed

    def _load_states(self, by_account: dict[str, list[tuple[Message, int, Record]]]) -> None:
        missing = [acc for acc in by_account if acc not in self.states]
        if not missing:
            return
        if self._in_doubt:
            self._roll_forward_in_doubt(missing)
        loaded = self.storage.load_states(missing)
        for acc in missing:
            self._sleeping.pop(acc, None)
            self.states[acc] = loaded.get(acc) or AccountState(acc)
            self._hours[acc] = ()
            self._minutes[acc] = ()

    def _drop_applied(
        self, by_account: dict[str, list[tuple[Message, int, Record]]], result: BatchResult
    ) -> tuple[dict[str, list[tuple[Message, int, Record]]], dict[str, list[Record]]]:
        """A message is applied whole within one batch, so its offset alone says whether it was.
        Returns the records still to apply and, per account, the ones already applied."""
        pending: dict[str, list[tuple[Message, int, Record]]] = {}
        applied: dict[str, list[Record]] = {}
        for acc, items in by_account.items():
            state = self.states[acc]
            fresh = []
            for msg, idx, rec in items:
                if state.log_epoch == self.epoch and state.log_partition == msg.partition and msg.offset <= state.log_offset:
                    applied.setdefault(acc, []).append(rec)
                else:
                    fresh.append((msg, idx, rec))
            result.skipped += len(items) - len(fresh)
            if fresh:
                pending[acc] = fresh
        return pending, applied

    def _republished(self, applied: dict[str, list[Record]]) -> tuple[list[StatusChange], list[Violation]]:
        """Records delivered again were applied, but the worker that applied them may have died
        after writing ClickHouse and before publishing to Kafka (the offset commit comes last).
        Their outputs are read back and published again: at least once, never lost. The status
        topic is compacted by account, so a repeated status is harmless; violations carry the
        event id for consumers that count them."""
        if not applied:
            return [], []
        seqs = {acc: self.states[acc].seq for acc in applied}
        events = [(acc, rec.event_id) for acc, recs in applied.items() for rec in recs if isinstance(rec, Usage) and is_api_call(rec)]
        return self.storage.committed_statuses(seqs), self.storage.committed_violations(events, seqs)

    def _hydrate(self, pending: dict[str, list[tuple[Message, int, Record]]]) -> None:
        """Load the identities, hour lines and rate windows these records touch."""
        seqs = {acc: self.states[acc].seq for acc in pending if self.states[acc].seq > 0}
        if not seqs:
            return
        wanted: dict[tuple[str, str], int] = {}
        hours: set[tuple[str, int]] = set()
        minutes: set[tuple[str, int]] = set()
        for acc in seqs:
            known_hours, known_minutes = self._hours[acc], self._minutes[acc]
            # every line and window stored for the account starts at or before its clock (a record
            # makes them at its own time; a rebill's lines at or before its record's): a later hour
            # or minute has none to load, which is every call of an account in time order
            clock = self.states[acc].max_ts_us
            for _, _, rec in pending[acc]:
                if isinstance(rec, Invalid):
                    continue
                wanted[(acc, rec.identity)] = rec.identity_hash
                if isinstance(rec, Usage):
                    hour = hour_start(rec.ts_us)
                    if hour <= clock and hour not in known_hours:
                        hours.add((acc, hour))
                    if is_api_call(rec):
                        minute = minute_start(rec.ts_us)
                        if minute <= clock and minute not in known_minutes:
                            minutes.add((acc, minute))
                else:
                    hours.update((acc, hour) for hour in _rebilled_hours(rec) if hour not in known_hours)
        for (acc, rid), (digest, seq) in self.storage.load_seen(wanted).items():
            if seq <= seqs[acc]:
                self.states[acc].seen[rid] = digest
        for acc, lines in self.storage.load_lines(sorted(hours), seqs).items():
            self.states[acc].add_lines(lines)
        for acc, windows in self.storage.load_windows(sorted(minutes), seqs).items():
            self.states[acc].windows.update(windows)
        for acc, hour in hours:
            self._hours[acc] = with_instant(self._hours[acc], hour)
        for acc, minute in minutes:
            self._minutes[acc] = with_instant(self._minutes[acc], minute)

    def _collect(
        self, rows: BatchRows, state: AccountState, msg: Message, idx: int, record: Record, outcome: Outcome, result: BatchResult
    ) -> None:
        """One record's rows (plain tuples built by name: batch/rows.py) and facts. Lines and windows are taken per account after its
        records, by `changes.collect_changed`."""
        acc = state.account_id
        rows.raw.append(
            raw_row(
                partition=msg.partition,
                offset=msg.offset,
                idx=idx,
                account_id=acc,
                kind=record.kind,
                record_id=record.identity,
                ts_us=record.ts_us,
                payload=record.raw,
            )
        )
        result.statuses[outcome.status] += 1
        if outcome.claimed and not isinstance(record, Invalid):
            rows.seen.append(
                seen_row(account_id=acc, record_id=record.identity, digest=record.digest, seq=state.seq, rid_hash=record.identity_hash)
            )
        if outcome.rejection is not None:
            rows.rejections.append(outcome.rejection)
            result.reasons[outcome.rejection.reason] += 1
            result.rejected_ids.append((acc, outcome.rejection.record_id, outcome.rejection.reason))
        if outcome.priced is not None:
            rows.priced.append(outcome.priced)
        if outcome.violations:  # most records make none of these three
            rows.violations.extend(outcome.violations)
        if outcome.settlements:
            rows.settlements.extend(outcome.settlements)
        if outcome.status_changes:
            rows.status_changes.extend(outcome.status_changes)

    def _advance_watermark(self, partition: int, ts_us: int, account_clock: int) -> None:
        """The partition's event time moves to `ts_us` unless the record is far ahead of the wall
        clock or of its own account's history (or, for an account's first record, of the partition):
        one account's clock must never settle the hours of the others (`clock_bounds`)."""
        bounds = self.clock_bounds
        latest = time.time_ns() // 1000 + bounds.max_future_us
        if ts_us > latest:
            return
        # an account clock a far-future record moved is no reference: the partition's is then
        reference = account_clock if 0 < account_clock <= latest else self.watermarks.get(partition, 0)
        if reference and ts_us > reference + bounds.max_jump_us:
            return
        self.watermarks[partition] = ts_us

    def _signed_ticks(self, ticks: list[tuple[str, int]]) -> list[tuple[str, bytes]]:
        key = self.control_key
        return [] if key is None else [(acc, topic_json.tick(acc, clock, key)) for acc, clock in ticks]

    def _idle_ticks(self) -> list[tuple[str, int]]:
        """Accounts whose open hours the partition's event time has passed but their own clock has
        not: a `clock.tick` at the partition watermark, published into their log, settles them."""
        ticks = []
        for acc, state in self.states.items():
            if state.log_epoch != self.epoch or not state.open_hours:
                continue
            watermark = self.watermarks.get(state.log_partition, 0)
            if watermark <= state.max_ts_us or self._ticked.get(acc, 0) >= watermark:
                continue
            if hour_closed(min(state.open_hours), self._grace_us, watermark):
                self._ticked[acc] = watermark
                ticks.append((acc, watermark))
        for (partition, first_open), sleepers in list(self._sleepers.items()):
            watermark = self.watermarks.get(partition, 0)
            if not hour_closed(first_open, self._grace_us, watermark):
                continue
            bucket = _asleep(partition, first_open, 0)
            waiting: list[str] = []
            for acc in sleepers:
                sleep = self._sleeping.get(acc)
                if sleep is None or sleep & ~_CLOCK_MASK != bucket:
                    continue  # awake again, or asleep since with another hour open
                if watermark > sleep & _CLOCK_MASK:
                    del self._sleeping[acc]  # its tick brings it back into memory
                    ticks.append((acc, watermark))
                else:
                    waiting.append(acc)
            if waiting:
                self._sleepers[(partition, first_open)] = waiting
            else:
                del self._sleepers[(partition, first_open)]
        return ticks

    def _evict(self) -> None:
        """Keep at most `max_cached_accounts` states between batches, the least recently used
        leaving first (each batch moves its accounts to the end): memory stays bounded however many
        distinct accounts, valid or not, the log names. An evicted state is in ClickHouse; the
        next record of its account loads it again."""
        excess = len(self.states) - self.max_cached_accounts
        if excess > 0:
            for acc in list(self.states)[:excess]:
                self._evict_one(acc)

    def _make_room(self, by_account: dict[str, list[tuple[Message, int, Record]]], touched: set[str]) -> None:
        """Before a unit loads the states it lacks, evict as many of the least recently used as
        keeps the cache at `max_cached_accounts`: with a million accounts a 50,000-record unit loads
        about 45,000 states, which on top of a full cache held 1.45 times its bound until the batch
        ended. This batch's (`touched`: the unit held for writing) and this unit's stay. A state
        evicted while its write is still in flight (the previous batch's last) is read again only
        once that write is in: this unit reads only its own accounts, and `_reads_beside` settles
        the write first if one of them is such a state."""
        missing = sum(1 for acc in by_account if acc not in self.states)
        excess = len(self.states) + missing - self.max_cached_accounts
        if excess <= 0:
            return
        victims: list[str] = []
        for acc in self.states:  # least recently used first
            if acc not in touched and acc not in by_account:
                victims.append(acc)
                if len(victims) == excess:
                    break
        for acc in victims:
            self._evict_one(acc)

    def _evict_one(self, acc: str) -> None:
        state = self.states.pop(acc)
        self._hours.pop(acc, None)
        self._minutes.pop(acc, None)
        self._ticked.pop(acc, None)
        # only the auto ticks read it: without them it would only grow, an entry per account seen
        if self.auto_tick and state.open_hours and state.log_epoch == self.epoch:
            first_open = min(state.open_hours)
            self._sleeping[acc] = _asleep(state.log_partition, first_open, state.max_ts_us)
            sleepers = self._sleepers.get((state.log_partition, first_open))
            if sleepers is None:
                self._sleepers[(state.log_partition, first_open)] = [acc]
            else:
                sleepers.append(acc)

    def _keep_recent(self, touched: Iterable[str]) -> None:
        """The batch's accounts become the most recently used: evicted last."""
        for acc in touched:
            state = self.states.pop(acc, None)
            if state is not None:
                self.states[acc] = state

    def _shed_idle_windows(self, *in_flight: set[str]) -> None:
        """Drop the rate windows of the cached accounts that have had no record for KEEP_MINUTES_US
        of their partition's event time; at most once per minute of the latest event time and per
        `shed_every_s` (a look at 100,000 states takes some 25 ms). `_prune` keeps an account's
        last minutes, which its next records may still need, but only when it has records: an
        idle account kept them until it came back or left the cache. Its next call is later
        still, in a minute with no window to load (`_hydrate`), and a late one loads its minute
        from ClickHouse again, as after `_prune`. The windows, a dict and two or three objects
        per account, are what the full garbage collection walks besides the state itself,
        holding Python's lock (stream/gcpause.py). The accounts whose writes may be in flight
        keep theirs (`_reads_beside`: what a write in flight holds stays in memory); their sets
        are joined only when a look is due, not after every batch."""
        latest = max(self.watermarks.values(), default=0)
        now = time.monotonic()
        if latest < self._shed_at + US_PER_MINUTE or now < self._shed_wall + self.shed_every_s:
            return
        self._shed_at, self._shed_wall = latest, now
        busy = set().union(*in_flight)
        for acc, state in self.states.items():
            if not state.windows or acc in busy:
                continue
            watermark = self.watermarks.get(state.log_partition, 0)
            if minute_start(state.max_ts_us) + KEEP_MINUTES_US > minute_start(watermark):
                continue
            state.windows = {}
            self._minutes[acc] = ()

    def _prune(self, accounts: Iterable[str]) -> None:
        """Keep only recent hours and minutes in memory; older ones are reloaded on demand. Only
        for accounts whose writes are all in (`_unpruned` says why)."""
        for acc in accounts:
            state = self.states.get(acc)
            if state is None:  # evicted meanwhile
                continue
            state.seen.clear()
            hour_floor = hour_start(state.max_ts_us) - KEEP_HOURS_US
            if any(h < hour_floor for h in self._hours[acc]):
                state.drop_lines_before(hour_floor)
                self._hours[acc] = tuple(h for h in self._hours[acc] if h >= hour_floor)
            minute_floor = state.window_floor(KEEP_MINUTES_US)
            if any(m < minute_floor for m in self._minutes[acc]):
                state.drop_windows_before(minute_floor)
                self._minutes[acc] = tuple(m for m in self._minutes[acc] if m >= minute_floor)
