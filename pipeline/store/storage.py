"""What the batch processor needs from its store, as an interface it receives.

The processor folds records in memory; everything it reads or writes beyond that goes through
these calls: the snapshots and what they commit (load_*), the positions already applied
(processed_offsets), the outputs of records delivered again (committed_*), a batch's writes
(encode on the folding thread, send on the sink thread, in order) and the undo of a failed
batch (roll_back). `ClickHouseStorage` is the one the worker runs (store/sink.py and
store/statestore.py, unchanged); `InMemoryStorage` keeps the same rows in dicts for unit tests
of the processor, with the same rule for what a snapshot commits: a row counts only up to its
account's snapshot seq.

The write protocol, in order (store/sink.py encode):
1. a unit's facts keyed by record identity or seq (raw records, identities, priced usage,
   rejections, violations, settlements, status changes),
2. the account snapshots, each with its redo (the lines, hour totals and windows its unit
   changed for that account): the commit point of every row above and below at their seq,
3. the aggregates themselves (lines, hour totals, windows): never at an uncommitted revision,
4. the partition positions and barriers; the Kafka offsets are committed only after.
A failure before the snapshots leaves rows beyond the accounts' snapshots, which roll_back
deletes. A failure after them leaves the accounts "in doubt": committed, aggregates maybe
missing. roll_forward writes their redo again (after a failed batch, or before an account the
processor could not roll forward then is loaded again); roll_forward_partitions does it for every
snapshot past its partition's progress row, when a worker first takes a partition (after a
crash, or another worker's failure). Then the batch is retried.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from clickhouse_connect.driver.client import Client

from pipeline.core.facts import PricedUsage, Rejection, Settlement, StatusChange, Violation
from pipeline.core.state import AccountState, Line, LineKey, Window
from pipeline.core.windows import LIMIT_ORDER, WindowKey
from pipeline.store import sink, statestore
from pipeline.store.sink import BatchRows


class Storage(Protocol):
    """Exactly what BatchProcessor calls. `encode` runs on the folding thread and must take
    everything it needs from the live states then (the next unit changes them); `send` runs on
    the processor's sink thread, one unit at a time, in the order encoded. The reads (load_*,
    committed_*, processed_offsets) run on its reader thread; `reads_beside_writes` says they may
    run while a `send` is in progress (the processor then decides which may: `_reads_beside`)."""

    reads_beside_writes: bool

    def encode(self, rows: BatchRows) -> Any: ...

    def send(self, encoded: Any) -> None: ...

    def roll_back(self, accounts: Iterable[str]) -> None: ...

    def roll_forward(self, accounts: Iterable[str]) -> int: ...

    def roll_forward_partitions(self, partitions: list[int]) -> int: ...

    def processed_offsets(self, epoch: str, partitions: list[int]) -> dict[int, int]: ...

    def load_states(self, accounts: Iterable[str]) -> dict[str, AccountState]: ...

    def load_recent_states(self, limit: int) -> dict[str, AccountState]: ...

    def load_seen(self, wanted: dict[tuple[str, str], int]) -> dict[tuple[str, str], tuple[str, int]]: ...

    def load_lines(self, account_hours: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[LineKey, Line]]: ...

    def load_windows(self, account_minutes: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[WindowKey, Window]]: ...

    def committed_statuses(self, max_seq: dict[str, int]) -> list[StatusChange]: ...

    def committed_violations(self, events: list[tuple[str, str]], max_seq: dict[str, int]) -> list[Violation]: ...


class ClickHouseStorage:
    """The worker's storage: the functions of sink.py and statestore.py on one client. Each call
    looks the function up in its module when it runs, so a test that wraps `sink.send` (to fail or
    delay a write against the real engine) still reaches it."""

    def __init__(self, client: Client, lanes: sink.InsertLanes | None = None, reader: Client | None = None, cluster: bool = False) -> None:
        self.client = client
        self.cluster = cluster  # BILLING_CLICKHOUSE_CLUSTER: deletes go to the shards' local tables (statestore.roll_back)
        self.lanes = lanes  # a unit's inserts of one step side by side; None: one after another on `client`
        # the reads' own client (an engine handle or server session of their own), so that they can
        # run while `client` writes; None: they use `client`, one call at a time
        self.reader = reader if reader is not None else client
        self.reads_beside_writes = reader is not None

    def encode(self, rows: BatchRows) -> sink.Encoded:
        return sink.encode(rows)

    def send(self, encoded: sink.Encoded) -> None:
        sink.send(self.client, encoded, self.lanes)

    def roll_back(self, accounts: Iterable[str]) -> None:
        statestore.roll_back(self.client, accounts, self.cluster)

    def roll_forward(self, accounts: Iterable[str]) -> int:
        return statestore.roll_forward(self.client, accounts)

    def roll_forward_partitions(self, partitions: list[int]) -> int:
        return statestore.roll_forward_partitions(self.client, partitions)

    def processed_offsets(self, epoch: str, partitions: list[int]) -> dict[int, int]:
        return statestore.processed_offsets(self.reader, epoch, partitions)

    def load_states(self, accounts: Iterable[str]) -> dict[str, AccountState]:
        return statestore.load_states(self.reader, accounts)

    def load_recent_states(self, limit: int) -> dict[str, AccountState]:
        return statestore.load_recent_states(self.reader, limit)

    def load_seen(self, wanted: dict[tuple[str, str], int]) -> dict[tuple[str, str], tuple[str, int]]:
        return statestore.load_seen(self.reader, wanted)

    def load_lines(self, account_hours: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[LineKey, Line]]:
        return statestore.load_lines(self.reader, account_hours, max_seq)

    def load_windows(self, account_minutes: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[WindowKey, Window]]:
        return statestore.load_windows(self.reader, account_minutes, max_seq)

    def committed_statuses(self, max_seq: dict[str, int]) -> list[StatusChange]:
        return statestore.committed_statuses(self.reader, max_seq)

    def committed_violations(self, events: list[tuple[str, str]], max_seq: dict[str, int]) -> list[Violation]:
        return statestore.committed_violations(self.reader, events, max_seq)


@dataclass
class Snapshot:
    """One unit's rows, copied from the live states when encoded (as sink.encode takes them)."""

    epoch: str
    seen: list[tuple[Any, ...]]
    priced: list[PricedUsage]
    rejections: list[Rejection]
    violations: list[Violation]
    windows: dict[tuple[str, WindowKey], Window]
    lines: dict[tuple[str, LineKey], Line]
    settlements: list[Settlement]
    status_changes: list[StatusChange]
    states: dict[str, bytes]
    redo: dict[str, "Redo"]  # per account: the lines and windows of `lines` and `windows`, as its snapshot carries them
    progress: list[tuple[int, int]]
    barriers: list[tuple[str, int]]
    raw: int


@dataclass
class Redo:
    """The aggregates one unit changed for one account, kept with its snapshot (sink.StateRow.redo)."""

    lines: list[tuple[LineKey, Line]] = field(default_factory=list)
    windows: list[tuple[WindowKey, Window]] = field(default_factory=list)


def _redos(lines: dict[tuple[str, LineKey], Line], windows: dict[tuple[str, WindowKey], Window]) -> dict[str, Redo]:
    redos: dict[str, Redo] = {}
    for (acc, line_key), line in lines.items():
        redos.setdefault(acc, Redo()).lines.append((line_key, line))
    for (acc, window_key), window in windows.items():
        redos.setdefault(acc, Redo()).windows.append((window_key, window))
    return redos


def _newest(rows: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """One row per key, the highest revision (the last written among equals): what a background
    merge of a ReplacingMergeTree(revision) table leaves."""
    kept: dict[tuple[str, Any], tuple[str, Any, Any]] = {}
    for row in rows:
        key = (row[0], row[1])
        if key not in kept or kept[key][2].revision <= row[2].revision:
            kept[key] = row
    return list(kept.values())


@dataclass
class InMemoryStorage:
    """The tables the processor reads back, in dicts; rows kept at every seq as ClickHouse keeps
    them, and read as of the snapshot seq the caller gives. For unit tests: `failing_sends` names
    the sends (1 for the first) that raise as a lost server would, `halfway_sends` the ones that
    raise after the snapshots and before the aggregates, `failing_roll_forwards` how many of the
    next roll_forward calls raise (roll_forward_partitions never does); `merge` does what a
    background merge would; the lists show what was written."""

    states: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)  # account -> (seq, snapshot)
    written_order: OrderedDict[str, None] = field(default_factory=OrderedDict)  # accounts, the last written last
    seen: list[tuple[Any, ...]] = field(default_factory=list)  # SeenRow order
    lines: list[tuple[str, LineKey, Line]] = field(default_factory=list)
    windows: list[tuple[str, WindowKey, Window]] = field(default_factory=list)
    priced: list[PricedUsage] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    progress: dict[tuple[str, int], int] = field(default_factory=dict)  # (epoch, partition) -> highest offset
    barriers: list[tuple[str, int]] = field(default_factory=list)
    raw_records: int = 0
    redo: dict[tuple[str, int], Redo] = field(default_factory=dict)  # (account, snapshot seq) -> its unit's aggregates
    failing_sends: set[int] = field(default_factory=set)
    halfway_sends: set[int] = field(default_factory=set)
    failing_roll_forwards: int = 0
    sends: int = 0  # every send, failed or not
    rolled_forward: int = 0  # snapshots whose redo was written again
    # reads take no lock: one beside a send sees any part of it, as a ClickHouse read beside a
    # unit's inserts can (False: the processor settles every write before reading)
    reads_beside_writes: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def encode(self, rows: BatchRows) -> Snapshot:
        return Snapshot(
            rows.epoch,
            list(rows.seen),
            list(rows.priced),
            list(rows.rejections),
            list(rows.violations),
            {k: copy.copy(w) for k, w in rows.windows.items()},
            {k: copy.copy(v) for k, v in rows.lines.items()},
            list(rows.settlements),
            list(rows.status_changes),
            {acc: s.to_json() for acc, s in rows.states.items()},
            _redos({k: copy.copy(v) for k, v in rows.lines.items()}, {k: copy.copy(w) for k, w in rows.windows.items()}),
            list(rows.progress),
            list(rows.barriers),
            len(rows.raw),
        )

    def send(self, encoded: Snapshot) -> None:
        """In sink.encode's order: the facts, the snapshots with their redo (the commit point), the
        aggregates, the positions and barriers. sink.encode's Null-twin checks before the snapshots
        store nothing and no value is refused here: a send failing before the commit is
        `failing_sends`, one failing after it (transient only, since the checks) `halfway_sends`."""
        with self._lock:
            self.sends += 1
            if self.sends in self.failing_sends:
                raise ConnectionError(f"in-memory storage: send {self.sends} fails (failing_sends)")
            self.raw_records += encoded.raw
            self.seen += encoded.seen
            self.priced += encoded.priced
            self.rejections += encoded.rejections
            self.violations += encoded.violations
            self.settlements += encoded.settlements
            self.status_changes += encoded.status_changes
            for acc, text in encoded.states.items():  # the commit point, before the aggregates
                seq = AccountState.from_json(text).seq
                self.states.setdefault(acc, []).append((seq, text))
                self.written_order[acc] = None
                self.written_order.move_to_end(acc)
                self.redo[(acc, seq)] = encoded.redo.get(acc, Redo())
            if self.sends in self.halfway_sends:
                raise ConnectionError(f"in-memory storage: send {self.sends} stops after the snapshots (halfway_sends)")
            self.windows += [(acc, key, w) for (acc, key), w in encoded.windows.items()]
            self.lines += [(acc, key, line) for (acc, key), line in encoded.lines.items()]
            for partition, offset in encoded.progress:
                key = (encoded.epoch, partition)
                self.progress[key] = max(offset, self.progress.get(key, -1))
            self.barriers += encoded.barriers

    def merge(self) -> None:
        """What a background merge of the aggregate tables can do at any moment."""
        with self._lock:
            self.lines = _newest(self.lines)
            self.windows = _newest(self.windows)

    def _write_redo(self, account: str, seq: int) -> None:
        redo = self.redo.get((account, seq), Redo())
        self.lines += [(account, key, copy.copy(line)) for key, line in redo.lines]
        self.windows += [(account, key, copy.copy(w)) for key, w in redo.windows]
        self.rolled_forward += 1

    def _roll_forward_may_fail(self) -> None:
        if self.failing_roll_forwards > 0:
            self.failing_roll_forwards -= 1
            raise ConnectionError("in-memory storage: roll forward fails (failing_roll_forwards)")

    def roll_forward(self, accounts: Iterable[str]) -> int:
        with self._lock:
            self._roll_forward_may_fail()
            found = [acc for acc in set(accounts) if acc in self.states]
            for acc in found:
                self._write_redo(acc, self.committed_seq(acc))
            return len(found)

    def roll_forward_partitions(self, partitions: list[int]) -> int:
        with self._lock:
            in_doubt = set()
            for acc, snapshots in self.states.items():
                for seq, text in snapshots:
                    if AccountState.from_json(text).log_partition in partitions and self._past_progress(text):
                        self._write_redo(acc, seq)
                        in_doubt.add(acc)
            return len(in_doubt)

    def committed_seq(self, account: str) -> int:
        return max((seq for seq, _ in self.states.get(account, [])), default=0)

    def roll_back(self, accounts: Iterable[str]) -> None:
        with self._lock:
            seqs = {acc: self.committed_seq(acc) for acc in set(accounts)}

            def kept(acc: str, seq: int) -> bool:
                return acc not in seqs or seq <= seqs[acc]

            self.seen = [r for r in self.seen if kept(r[0], r[3])]
            self.lines = [r for r in self.lines if kept(r[0], r[2].revision)]
            self.windows = [r for r in self.windows if kept(r[0], r[2].revision)]
            self.priced = [r for r in self.priced if kept(r.account_id, r.seq)]
            self.rejections = [r for r in self.rejections if kept(r.account_id, r.seq)]
            self.violations = [r for r in self.violations if kept(r.account_id, r.seq)]
            self.settlements = [r for r in self.settlements if kept(r.account_id, r.seq)]
            self.status_changes = [r for r in self.status_changes if kept(r.account_id, r.seq)]

    def _past_progress(self, text: bytes) -> bool:
        state = AccountState.from_json(text)
        return bool(state.log_epoch) and state.log_offset > self.progress.get((state.log_epoch, state.log_partition), -1)

    def processed_offsets(self, epoch: str, partitions: list[int]) -> dict[int, int]:
        return {p: o for (e, p), o in self.progress.items() if e == epoch and p in partitions}

    def load_states(self, accounts: Iterable[str]) -> dict[str, AccountState]:
        return {acc: AccountState.from_json(max(self.states[acc])[1]) for acc in set(accounts) if acc in self.states}

    def load_recent_states(self, limit: int) -> dict[str, AccountState]:
        return self.load_states(list(self.written_order)[-limit:] if limit > 0 else [])

    def load_seen(self, wanted: dict[tuple[str, str], int]) -> dict[tuple[str, str], tuple[str, int]]:
        found: dict[tuple[str, str], tuple[str, int]] = {}
        for acc, rid, digest, seq, _ in self.seen:
            key = (acc, rid)
            if key in wanted and (key not in found or seq < found[key][1]):
                found[key] = (digest, seq)
        return found

    def load_lines(self, account_hours: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[LineKey, Line]]:
        wanted = set(account_hours)
        lines: dict[str, dict[LineKey, Line]] = {}
        for acc, key, line in self.lines:
            if (acc, key[0]) in wanted and line.revision <= max_seq.get(acc, 0):
                known = lines.setdefault(acc, {})
                if key not in known or known[key].revision < line.revision:
                    known[key] = copy.copy(line)
        return lines

    def load_windows(self, account_minutes: list[tuple[str, int]], max_seq: dict[str, int]) -> dict[str, dict[WindowKey, Window]]:
        from pipeline.core.windows import minute_start

        wanted = set(account_minutes)
        windows: dict[str, dict[WindowKey, Window]] = {}
        for acc, key, window in self.windows:
            if (acc, minute_start(key[1])) in wanted and window.revision <= max_seq.get(acc, 0):
                known = windows.setdefault(acc, {})
                if key not in known or known[key].revision < window.revision:
                    known[key] = copy.copy(window)
        return windows

    def committed_statuses(self, max_seq: dict[str, int]) -> list[StatusChange]:
        latest: dict[str, StatusChange] = {}
        for change in sorted(self.status_changes, key=lambda c: c.seq):
            if change.account_id in max_seq and change.seq <= max_seq[change.account_id]:
                latest[change.account_id] = change
        return [latest[acc] for acc in sorted(latest)]

    def committed_violations(self, events: list[tuple[str, str]], max_seq: dict[str, int]) -> list[Violation]:
        wanted = set(events)
        found = {v for v in self.violations if (v.account_id, v.event_id) in wanted and v.seq <= max_seq.get(v.account_id, 0)}
        return sorted(found, key=lambda v: (v.account_id, v.seq, LIMIT_ORDER.get(v.limit, len(LIMIT_ORDER))))
