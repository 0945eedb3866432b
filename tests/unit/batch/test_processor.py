"""The batch processor against the in-memory storage (store/storage.py): what a restart, a
redelivery, a failed write and a gap in the log do to the bills, without a broker or an engine.
The same stories against the real engine are in tests/integration/test_processor_edges.py."""

from __future__ import annotations

import json

import pytest

from pipeline.batch.processor import BatchProcessor, OffsetGap
from pipeline.core.catalog import load_catalog
from pipeline.core.state import LINE_COUNTS
from pipeline.demo.workload import generate
from pipeline.store.storage import InMemoryStorage
from tests.messages import one_record_messages as messages

EPOCH = "unit-epoch"


def processor(storage: InMemoryStorage, write_records: int = 50_000) -> BatchProcessor:
    return BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, write_records=write_records, storage=storage)  # type: ignore[arg-type]


def snapshots(storage: InMemoryStorage) -> dict[str, dict]:
    """Each account's committed snapshot: balances, debt, lines, quota, seen identities."""
    return {acc: json.loads(state.to_json()) for acc, state in storage.load_states(storage.states).items()}


def billed(storage: InMemoryStorage) -> list[tuple]:
    return sorted((p.account_id, p.event_id, p.token_amount, p.plugin_amount) for p in storage.priced)


def bill_lines(storage: InMemoryStorage) -> dict[tuple, tuple]:
    """Each bill line's current value as a reader sees it: the highest revision at or below its
    account's committed snapshot."""
    current: dict[tuple, tuple] = {}
    for acc, key, line in storage.lines:
        if line.revision <= storage.committed_seq(acc) and current.get((acc, key), (-1,))[0] < line.revision:
            current[(acc, key)] = (line.revision, *(getattr(line, name) for name in LINE_COUNTS), line.amount)
    return current


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return generate(1200, seed=4848)


@pytest.fixture(scope="module")
def uninterrupted(lines: list[str]) -> InMemoryStorage:
    storage = InMemoryStorage()
    processor(storage).process(messages(lines))
    return storage


def test_a_restart_on_the_stored_snapshots_bills_as_one_uninterrupted_run(lines, uninterrupted) -> None:
    storage = InMemoryStorage()
    msgs = messages(lines)
    processor(storage).process(msgs[:600])
    again = processor(storage).process(msgs)  # a new worker: the first 600 come again with the rest
    assert again.skipped == 600 and sum(again.statuses.values()) == len(msgs) - 600
    assert snapshots(storage) == snapshots(uninterrupted)
    assert billed(storage) == billed(uninterrupted)


def test_a_write_lost_mid_batch_is_rolled_back_and_the_batch_again_bills_each_record_once(lines, uninterrupted) -> None:
    storage = InMemoryStorage(failing_sends={3})
    msgs = messages(lines)
    with pytest.raises(ConnectionError):
        processor(storage, write_records=250).process(msgs)
    written = storage.raw_records  # the two units written before the loss
    again = processor(storage, write_records=250).process(msgs)
    assert again.skipped == written > 0
    assert sum(again.statuses.values()) == len(msgs) - again.skipped
    assert snapshots(storage) == snapshots(uninterrupted)
    assert billed(storage) == billed(uninterrupted)


def test_the_same_processor_retries_a_failed_batch_from_its_store_not_from_memory(lines, uninterrupted) -> None:
    storage = InMemoryStorage(failing_sends={2})
    worker = processor(storage, write_records=300)
    msgs = messages(lines)
    with pytest.raises(ConnectionError):
        worker.process(msgs)
    worker.process(msgs)  # the worker's retry of the batch it could not write
    assert snapshots(storage) == snapshots(uninterrupted)
    assert billed(storage) == billed(uninterrupted)


def test_outputs_of_a_batch_written_but_never_published_come_again_with_its_redelivery(lines) -> None:
    storage = InMemoryStorage()
    msgs = messages(lines)
    lost = processor(storage).process(msgs)  # written; the worker dies before publishing
    again = processor(storage).process(msgs)
    assert again.skipped == len(msgs)
    assert {c.account_id: c for c in again.status_changes} == {c.account_id: c for c in lost.status_changes}
    assert {(v.account_id, v.event_id, v.limit) for v in again.violations} == {(v.account_id, v.event_id, v.limit) for v in lost.violations}


def test_an_offset_gap_stops_the_processor(lines) -> None:
    storage = InMemoryStorage()
    msgs = messages(lines, partitions=1)
    processor(storage).process(msgs[:50])
    with pytest.raises(OffsetGap, match="offsets from 50 were never applied"):
        processor(storage).process(msgs[60:80])


@pytest.mark.parametrize("auto_tick", [False, True])
def test_evicted_accounts_are_remembered_for_the_auto_ticks_only(lines, uninterrupted, auto_tick: bool) -> None:
    """An evicted account with open hours is remembered so that the partition's event time still
    settles it; without the auto ticks nothing reads that index, and it grew by an account seen."""
    storage = InMemoryStorage()
    worker = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=auto_tick, max_cached_accounts=2, storage=storage)  # type: ignore[arg-type]
    msgs = messages(lines)
    for i in range(0, len(msgs), 100):
        worker.process(msgs[i : i + 100])
    assert len(worker.states) == 2
    assert bool(worker._sleeping) is auto_tick
    assert billed(storage) == billed(uninterrupted)  # evicting and reloading changes no bill


def test_the_cache_bound_holds_while_a_batch_loads_not_only_between_batches() -> None:
    """Gateway traffic: one unit per batch, most of its accounts not in memory. Room is made before
    a unit loads its states, so the cache holds at most its bound (or the unit's own accounts,
    if more), where it held the bound plus the unit's new accounts until the batch ended."""
    lines = generate(3000, seed=4950, accounts=60)
    storage = InMemoryStorage()
    worker = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, write_records=50, max_cached_accounts=10, storage=storage)  # type: ignore[arg-type]
    held_at_loads: list[int] = []
    load = storage.load_states

    def load_counting(accounts: list[str]) -> dict:
        held_at_loads.append(len(worker.states) + len(accounts))
        return load(accounts)

    storage.load_states = load_counting  # type: ignore[method-assign]
    msgs = messages(lines)
    bound = 10
    for i in range(0, len(msgs), 50):
        unit = msgs[i : i + 50]
        worker.process(unit)
        bound = max(bound, len({m.key for m in unit}))
    assert held_at_loads and max(held_at_loads) <= bound
    reference = InMemoryStorage()
    processor(reference).process(msgs)
    assert billed(storage) == billed(reference)
    assert bill_lines(storage) == bill_lines(reference)


def test_a_write_stopping_after_the_snapshots_is_rolled_forward_and_a_merge_loses_nothing(lines, uninterrupted) -> None:
    """The second unit's snapshots are in, its lines and windows are not, and a merge keeps only
    each line's newest revision: the failed batch's roll forward writes the unit's lines from the
    snapshots' redo, and the retry bills every line as one uninterrupted run."""
    storage = InMemoryStorage(halfway_sends={2})
    worker = processor(storage, write_records=300)
    msgs = messages(lines)
    with pytest.raises(ConnectionError, match="halfway"):
        worker.process(msgs)
    storage.merge()
    again = worker.process(msgs)
    assert again.skipped == 600  # the second unit is committed: its records are not folded again
    assert snapshots(storage) == snapshots(uninterrupted)
    assert billed(storage) == billed(uninterrupted)
    assert bill_lines(storage) == bill_lines(uninterrupted)


def test_accounts_left_in_doubt_are_rolled_forward_before_the_same_worker_reads_them(lines, uninterrupted) -> None:
    """As above, with the roll forward failing twice (after the failed write, and again when the
    retry first needs the accounts): the retry fails before folding anything on top of them, and
    the next one rolls them forward first."""
    storage = InMemoryStorage(halfway_sends={2}, failing_roll_forwards=2)
    worker = processor(storage, write_records=300)
    msgs = messages(lines)
    with pytest.raises(ConnectionError, match="halfway"):
        worker.process(msgs)
    storage.merge()
    with pytest.raises(ConnectionError, match="roll forward"):
        worker.process(msgs)
    worker.process(msgs)
    assert storage.rolled_forward > 0
    assert snapshots(storage) == snapshots(uninterrupted)
    assert bill_lines(storage) == bill_lines(uninterrupted)


def test_a_restart_after_a_write_stopping_after_the_snapshots_rolls_the_partitions_forward(lines, uninterrupted) -> None:
    """The worker dies after such a write, without having rolled anything forward; a new one on the
    same epoch rolls forward the snapshots written past their partitions' progress before it
    reads any state, and bills every line as one uninterrupted run."""
    storage = InMemoryStorage(halfway_sends={2}, failing_roll_forwards=1)
    msgs = messages(lines)
    with pytest.raises(ConnectionError, match="halfway"):
        processor(storage, write_records=300).process(msgs)
    storage.merge()
    again = processor(storage, write_records=300).process(msgs)
    assert again.skipped == 600 and storage.rolled_forward > 0
    assert snapshots(storage) == snapshots(uninterrupted)
    assert billed(storage) == billed(uninterrupted)
    assert bill_lines(storage) == bill_lines(uninterrupted)


def test_a_batch_reports_its_folding_threads_time_by_phase(lines) -> None:
    """Every phase of processor.PHASES is timed, in every unit (the bench adds them up to show
    where a batch's time goes); none is negative and together they fit in the batch's time."""
    import time

    from pipeline.batch.processor import PHASES

    started = time.perf_counter()
    result = processor(InMemoryStorage(), write_records=300).process(messages(lines))
    elapsed = time.perf_counter() - started
    assert set(result.phase_s) == set(PHASES)
    assert all(seconds >= 0 for seconds in result.phase_s.values())
    assert result.phase_s["fold"] > 0 and result.phase_s["parse"] > 0 and result.phase_s["encode"] > 0
    assert sum(result.phase_s.values()) + result.write_wait_s <= elapsed


class LateLanding(InMemoryStorage):
    """A storage whose writes land late: each send waits until the reads that follow it have run
    (or 0.2 s), so every read the processor allows beside a write sees none of it, the worst case
    of a ClickHouse read beside a unit's inserts. `beside` counts the reads made while a send was
    still waiting."""

    def __init__(self, reads_beside_writes: bool = True) -> None:
        super().__init__(reads_beside_writes=reads_beside_writes)
        import threading

        self._landing = threading.Event()
        self._sending = threading.Event()
        self.beside = 0

    def send(self, encoded) -> None:  # type: ignore[no-untyped-def]
        self._landing.clear()
        self._sending.set()
        self._landing.wait(0.2)
        try:
            super().send(encoded)
        finally:
            self._sending.clear()

    def load_seen(self, wanted):  # type: ignore[no-untyped-def]
        found = super().load_seen(wanted)
        if self._sending.is_set():
            self.beside += 1
        self._landing.set()  # the reads of the unit are done: the write may land now
        return found


def sent_again(msgs: list, start_offsets: dict[int, int]) -> list:
    """The same records in new messages further on in the log: a gateway's retry, which only the
    records' identities (the seen ids) tell apart from new calls."""
    from pipeline.batch.processor import Message

    offsets = dict(start_offsets)
    out = []
    for m in msgs:
        out.append(Message(m.partition, offsets[m.partition], m.key, m.value))
        offsets[m.partition] += 1
    return out


@pytest.mark.parametrize(("write_records", "cached"), [(50, 2), (400, 20)])
def test_reads_beside_a_write_in_flight_bill_as_reads_after_it(lines, write_records: int, cached: int) -> None:
    """The worker's shape: every batch leaves its last write in flight, and the next batch's reads
    (and a unit's, beside the unit before) run while it lands (processor._reads_beside). Records
    sent again right behind a write that has not landed are still duplicates, late records still
    find their hours, and a small cache that evicts accounts between batches changes nothing: the
    bills, snapshots and outputs are those of a processor that reads only after every write.
    (With 2 cached states, accounts whose write is in flight are evicted and come back at once.)"""
    msgs = messages(lines)
    ends = {p: max(m.offset for m in msgs if m.partition == p) + 1 for p in {m.partition for m in msgs}}
    again = sent_again([m for m in msgs[300:700]], ends)
    batches = [msgs[:300], msgs[300:700], again[:200] + msgs[700:], again[200:]]
    batches[2].sort(key=lambda m: (m.partition, m.offset))  # one log per partition, in order
    results = {}
    for beside in (True, False):
        storage = LateLanding(reads_beside_writes=beside)
        worker = BatchProcessor(
            None, load_catalog(), EPOCH, auto_tick=False, write_records=write_records, max_cached_accounts=cached, storage=storage
        )  # type: ignore[arg-type]
        outcomes = []
        for batch in batches:
            result = worker.process(sorted(batch, key=lambda m: (m.partition, m.offset)), leave_last_write=True)
            outcomes.append((dict(result.statuses), sorted(result.violations), sorted(result.status_changes)))
        worker.wait_for_writes()
        results[beside] = (storage, outcomes)
        assert (storage.beside > 0) is beside  # the overlap did happen (and never without it)
    overlapped, serial = results[True][0], results[False][0]
    assert results[True][1] == results[False][1]
    assert sum(results[True][1][2][0].values()) + sum(results[True][1][3][0].values()) >= 400
    assert results[True][1][3][0].get("duplicate", 0) > 0
    assert snapshots(overlapped) == snapshots(serial)
    assert billed(overlapped) == billed(serial)
    assert bill_lines(overlapped) == bill_lines(serial)


@pytest.mark.parametrize("beside", [True, False])
def test_working_sets_wait_for_the_last_write_only_where_reads_may_run_beside_it(lines, beside: bool) -> None:
    """A batch that leaves its last write in flight keeps its accounts' claimed ids in memory
    until the next batch only if that batch's reads may run beside the write (they must find
    those ids in memory, not in ClickHouse); otherwise it drops them at its end, as memory held
    for nothing on a worker with a million accounts."""
    msgs = sorted(messages(lines), key=lambda m: (m.partition, m.offset))
    worker = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, storage=LateLanding(reads_beside_writes=beside))  # type: ignore[arg-type]
    worker.process(msgs[:300], leave_last_write=True)
    holding = [acc for acc, state in worker.states.items() if state.seen]
    assert bool(holding) is beside
    worker.process([], leave_last_write=True)  # the next batch: the write is in by its end
    assert not any(worker.states[acc].seen for acc in holding)
    worker.wait_for_writes()


def _call(acc: str, event_id: str, ts: str) -> dict:
    return {
        "account_id": acc,
        "timestamp": ts,
        "event_id": event_id,
        "api_key_id": "k1",
        "model": "xingchen-plus",
        "input_tokens": 1000,
        "output_tokens": 100,
    }


def test_evicted_accounts_are_ticked_once_their_partitions_event_time_closes_their_hour() -> None:
    """An account evicted with an hour open is settled by a tick when its partition's event time
    passes that hour (and the 10 minutes' grace), once. One that came back into memory and settled
    that hour itself is not ticked for the hour it slept with; evicted again with a later hour
    open, it is ticked when that hour closes."""
    key = b"unit-control-key-0123456789abcdef"
    worker = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=True, control_key=key, max_cached_accounts=1, storage=InMemoryStorage())  # type: ignore[arg-type]
    offset = 0

    def batch(*records: dict) -> list[str]:
        nonlocal offset
        result = worker.process(messages([json.dumps(r) for r in records], partitions=1, start=offset))
        offset += len(records)
        return sorted(acc for acc, _ in result.ticks)

    def new(acc: str, ts: str) -> list[dict]:
        return [
            {"type": "api_key.created", "account_id": acc, "timestamp": "2024-09-18T09:00:00+08:00", "api_key_id": "k1"},
            _call(acc, f"{acc}-1", ts),
        ]

    assert batch(*new("sleepy", "2024-09-18T10:00:00+08:00")) == []
    assert batch(*new("woken", "2024-09-18T10:00:00+08:00")) == []
    assert batch(*new("loud", "2024-09-18T10:05:00+08:00")) == []
    assert batch(*new("later", "2024-09-18T10:06:00+08:00")) == []
    assert len(worker.states) == 1 and len(worker._sleeping) == 3  # each asleep with 10:00 open
    # woken wakes and settles 10:00 by its own clock; the partition's event time closes 10:00 for the others
    assert batch(_call("woken", "woken-2", "2024-09-18T11:12:00+08:00")) == ["later", "loud", "sleepy"]
    assert batch(_call("loud", "loud-2", "2024-09-18T11:20:00+08:00")) == []  # once; woken asleep with 11:00 open
    assert batch(_call("sleepy", "sleepy-2", "2024-09-18T12:15:00+08:00")) == ["loud", "woken"]  # 11:00 closed


def test_idle_accounts_shed_their_rate_windows_and_bill_as_if_they_had_kept_them(lines) -> None:
    """Once a minute of event time, after a batch, the processor drops the rate windows of cached
    accounts that had no record for two minutes of their partition's event time (fewer objects for
    the full garbage collection to walk, stream/gcpause.py). Their later calls, and late ones in the minutes dropped, are
    limited and billed as by a processor that kept them; accounts whose write may still be in
    flight keep theirs."""
    msgs = sorted(messages(lines), key=lambda m: (m.partition, m.offset))
    storages = {True: LateLanding(reads_beside_writes=True), False: LateLanding(reads_beside_writes=True)}
    workers = {shed: BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, storage=storages[shed]) for shed in (True, False)}  # type: ignore[arg-type]
    workers[False].shed_idle = False
    workers[True].shed_every_s = 0.0  # a look after every batch whose event time moved a minute
    outcomes: dict[bool, list] = {True: [], False: []}
    shed_seen = 0
    for start in range(0, len(msgs), 60):
        for shed, worker in workers.items():
            result = worker.process(msgs[start : start + 60], leave_last_write=True)
            outcomes[shed].append((dict(result.statuses), sorted(result.violations), sorted(result.status_changes)))
        kept, shedding = workers[False], workers[True]
        for acc in shedding._last_touched:  # in flight: kept whole
            assert shedding.states[acc].windows.keys() == kept.states[acc].windows.keys()
        shed_seen += sum(1 for acc, state in shedding.states.items() if not state.windows and kept.states[acc].windows)
    for worker in workers.values():
        worker.wait_for_writes()
    assert shed_seen > 0
    assert any(violations for _, violations, _ in outcomes[True])  # the limits were in play
    assert outcomes[True] == outcomes[False]
    assert snapshots(storages[True]) == snapshots(storages[False])
    assert billed(storages[True]) == billed(storages[False])
    assert bill_lines(storages[True]) == bill_lines(storages[False])


@pytest.mark.parametrize("shedding", [True, False])
def test_a_late_call_in_a_shed_minute_is_limited_as_if_its_window_had_stayed(shedding: bool) -> None:
    """One call a second is allowed (the catalog's default QPS). "quiet" calls at 10:00:00, then
    "busy" moves the partition's event time to 10:05, so quiet's windows are dropped; a late call
    of quiet's in the same second is still the second call of that second: a violation, as for a
    processor that kept the window (it is loaded again from the store)."""
    worker = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, storage=InMemoryStorage())  # type: ignore[arg-type]
    worker.shed_idle, worker.shed_every_s = shedding, 0.0
    offset = 0

    def batch(*records: dict) -> list:
        nonlocal offset
        result = worker.process(messages([json.dumps(r) for r in records], partitions=1, start=offset))
        offset += len(records)
        return sorted(v.event_id for v in result.violations)

    def key(acc: str) -> dict:
        return {"type": "api_key.created", "account_id": acc, "timestamp": "2024-09-18T09:00:00+08:00", "api_key_id": "k1"}

    def call(acc: str, event_id: str, ts: str) -> dict:
        return {**_call(acc, event_id, ts), "input_tokens": 10, "output_tokens": 5}  # far below the tokens a minute

    assert batch(key("quiet"), key("busy"), call("quiet", "q1", "2024-09-18T10:00:00+08:00")) == []
    assert worker.states["quiet"].windows  # its clock is the partition's
    assert batch(call("busy", "b1", "2024-09-18T10:05:00+08:00")) == []
    assert bool(worker.states["quiet"].windows) is not shedding and worker.states["busy"].windows
    assert batch(call("quiet", "q2", "2024-09-18T10:00:00+08:00")) == ["q2"]


def test_a_warmed_cache_holds_the_latest_snapshots_and_bills_as_one_uninterrupted_run(lines, uninterrupted) -> None:
    """A restarted worker fills its cache with the accounts written most recently before its
    first batch (BatchProcessor.warm): as many as the cache holds, only the ones it owns, each
    its committed snapshot; what it bills next is what one uninterrupted run bills."""
    storage = InMemoryStorage()
    msgs = messages(lines)
    processor(storage).process(msgs[:600])
    written = list(storage.written_order)
    small = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, max_cached_accounts=2, storage=storage)  # type: ignore[arg-type]
    assert small.warm() == 2 and set(small.states) == set(written[-2:])  # the two written last
    mine = BatchProcessor(None, load_catalog(), EPOCH, auto_tick=False, storage=storage)  # type: ignore[arg-type]
    assert mine.warm(owned=lambda acc: acc != written[0]) == len(written) - 1 and written[0] not in mine.states
    restarted = processor(storage)
    assert restarted.warm() == len(written)
    assert {acc: json.loads(s.to_json()) for acc, s in restarted.states.items()} == snapshots(storage)
    assert restarted.warm() == 0  # nothing more to load: every written account is in
    again = restarted.process(msgs)  # the first 600 come again with the rest
    assert again.skipped == 600
    assert snapshots(storage) == snapshots(uninterrupted)
    assert billed(storage) == billed(uninterrupted)


@pytest.mark.parametrize(("partitions", "billed_alone"), [(1, True), (4, False)])
def test_records_without_a_message_key_are_refused_only_where_partitions_can_reorder_them(lines, uninterrupted, partitions, billed_alone):
    """One partition keeps every record in order, keyed or not; with several, an unkeyed record
    is refused (records.UNKEYED), counted for the worker's warning, and nothing of it is billed."""
    from pipeline.batch.processor import Message
    from pipeline.stream.partitioning import PlacementCheck

    storage = InMemoryStorage()
    unkeyed = [Message(0, offset, None, line.encode()) for offset, line in enumerate(lines)]
    worker = processor(storage)
    worker.placement = PlacementCheck(partitions)
    result = worker.process(unkeyed)
    if billed_alone:
        assert billed(storage) == billed(uninterrupted) and result.unkeyed == 0
    else:
        assert billed(storage) == [] and result.statuses == {"rejected": len(lines)}
        assert 0.9 * len(lines) < result.unkeyed < len(lines)  # the workload's broken records keep their own reasons


def _placed(lines: list[str], partitions: int = 4) -> tuple[list, dict[int, int]]:
    """The records as a worker of `partitions` partitions reads them (each on its key's partition,
    offsets numbered per partition), and each partition's next offset."""
    from pipeline.batch.processor import Message
    from pipeline.stream.partitioning import partition_for

    offsets: dict[int, int] = {}
    log = []
    for m in messages(lines):
        p = partition_for(m.key, partitions)
        log.append(Message(p, offsets.setdefault(p, 0), m.key, m.value))
        offsets[p] += 1
    return log, offsets


def test_a_misplaced_message_stops_the_batch_unless_an_operator_set_it_aside(lines, uninterrupted) -> None:
    """A copy of a record sent to another partition than its key's stops the batch; set aside, it
    is refused and kept, and every record bills exactly as without it."""
    from pipeline.batch.processor import Message
    from pipeline.stream.partitioning import PartitionMismatch, PlacementCheck

    log, offsets = _placed(lines)
    copy = log[5]
    wrong = (copy.partition + 1) % 4
    log.append(Message(wrong, offsets[wrong], copy.key, copy.value))
    worker = processor(InMemoryStorage())
    worker.placement = PlacementCheck(4)
    with pytest.raises(PartitionMismatch, match=f"BILLING_SET_ASIDE={wrong}:{offsets[wrong]}"):
        worker.process(log)
    storage = InMemoryStorage()
    worker = processor(storage)
    worker.placement = PlacementCheck(4, frozenset({(wrong, offsets[wrong])}))
    worker.process(log)
    refused = [r for r in storage.rejections if "set aside by the operator" in r.detail]
    assert len(refused) == 1 and refused[0].reason == "invalid_schema" and refused[0].account_id == json.loads(copy.value)["account_id"]
    assert billed(storage) == billed(uninterrupted)


def test_a_record_refused_for_its_partition_leaves_its_accounts_position_alone(lines) -> None:
    """An account's records are skipped on redelivery by its position in its own partition. An
    unkeyed record of the account, refused on another partition, must not move that position:
    the batch delivered again after a crash (written, not committed) is then skipped whole, its
    own records not folded again as duplicates."""
    from pipeline.batch.processor import Message
    from pipeline.stream.partitioning import PlacementCheck, partition_for

    log, offsets = _placed(lines)
    foreign = []
    for acc in {m.key for m in log}:
        p = (partition_for(acc, 4) + 1) % 4
        value = next(m.value for m in log if m.key == acc)
        foreign.append(Message(p, offsets[p], None, value))  # its account's record again, unkeyed
        offsets[p] += 1
    batch = log + foreign
    storage = InMemoryStorage()
    first = processor(storage)
    first.placement = PlacementCheck(4)
    assert first.process(batch).unkeyed == len(foreign)
    again = processor(storage)  # a new worker: the batch comes again
    again.placement = PlacementCheck(4)
    result = again.process(batch)
    assert result.skipped == len(log) and result.statuses.get("duplicate", 0) == 0
