"""The batch edge on the real engine, without a broker: offset gaps, pruned hours, restarts."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.batch.processor import BatchProcessor, Message, OffsetGap
from pipeline.core.catalog import load_catalog
from pipeline.core.control import sign_line
from pipeline.demo.workload import generate
from pipeline.store import queries
from tests.integration.stack import assert_hour_totals_exact, bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.messages import one_record_messages as messages
from tests.oracle import expected

pytestmark = pytest.mark.integration


def fail_nth_write(monkeypatch, n: int, message: str) -> list[int]:
    """Make the sink's n-th write fail as a lost server would; returns the records of each write."""
    from pipeline.store import sink

    real_send = sink.send
    writes: list[int] = []

    def send(client_, encoded, *lanes) -> None:
        writes.append(encoded.records)
        if len(writes) == n:
            raise ConnectionError(message)
        real_send(client_, encoded, *lanes)

    monkeypatch.setattr(sink, "send", send)
    return writes


def test_an_offset_gap_stops_the_processor(client) -> None:
    epoch = uuid.uuid4().hex
    msgs = [m for m in messages(generate(300, seed=3), partitions=1)]
    BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(msgs[:50])
    restarted = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    with pytest.raises(OffsetGap, match="offsets from 50 were never applied"):
        restarted.process(msgs[60:80])
    restarted.process(msgs[40:80])  # resuming at (or before) the applied position is fine


def test_restarts_and_redeliveries_in_any_batch_shape_bill_exactly(client) -> None:
    """Random batch sizes, a process restart (all memory lost) every few batches, half of them
    warming the cache from the latest snapshots as a starting worker does, and redelivered
    overlaps: the bills equal the oracle, late hours reloaded from ClickHouse included."""
    import random

    from pipeline.store import statestore

    lines = generate(4000, seed=31)
    msgs = messages(lines)
    epoch = uuid.uuid4().hex
    rng = random.Random(1)
    processor = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    position, warmed = 0, 0
    while position < len(msgs):
        size = rng.randint(1, 700)
        start = max(0, position - rng.randint(0, 50))  # redeliver a little of what went before
        processor.process(msgs[start : position + size])
        position += size
        if rng.random() < 0.3:
            processor = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)  # a restart
            if rng.random() < 0.5:
                warmed += processor.warm()
    assert warmed > 0
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    assert_hour_totals_exact(client, accounts_of(lines))  # the console's per account-hour totals: nothing twice
    recent = statestore.load_recent_states(client, 3)
    assert len(recent) == 3 and {a: s.to_json() for a, s in statestore.load_states(client, recent).items()} == {
        a: s.to_json() for a, s in recent.items()
    }


def test_outputs_lost_before_publishing_are_published_when_redelivered(client) -> None:
    """A worker writes a batch to ClickHouse and dies before publishing its status changes and
    violations to Kafka (the offset is committed after both). The batch is delivered again to a
    new worker: its records are skipped, not re-applied, and what the first worker never
    published is published now, so the status topic ends as if nothing had happened."""
    from pipeline.demo.workload import generate_settlement

    lines = generate_settlement(3000, seed=8)
    msgs = messages(lines, partitions=1)
    epoch = uuid.uuid4().hex
    first_half, second_half = msgs[:1500], msgs[1500:]
    published: dict[str, object] = {}
    violations: set[tuple[str, str, str]] = set()

    def publish(result) -> None:
        published.update((change.account_id, change) for change in result.status_changes)
        violations.update((v.account_id, v.event_id, v.limit) for v in result.violations)

    worker = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    publish(worker.process(first_half))
    lost = worker.process(second_half)  # written; the worker dies before publishing
    assert lost.status_changes and lost.violations, "the lost batch must have outputs to lose"
    unpublished_latest = {c.account_id: c for c in lost.status_changes}
    assert any(published.get(acc) != change for acc, change in unpublished_latest.items())

    again = BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(second_half)
    assert again.skipped == len(second_half) and sum(again.statuses.values()) == 0  # nothing applied twice
    publish(again)
    for account, change in unpublished_latest.items():
        assert published[account] == change  # the gateway's view: every account's latest status
    assert {(v.account_id, v.event_id, v.limit) for v in lost.violations} <= violations


def test_a_rebill_racing_a_late_call_is_refused_and_running_it_again_bills_both(client, tmp_path: Path) -> None:
    """`billing rebill` reads the archive, then its revised lines travel through the input topic.
    A late call for a rebilled line that the worker applies in between must not be overwritten:
    the account's rebill is refused (stale_rebill, listed with the reason), the other accounts'
    are applied, and the same rebill run again bills the late call under the new catalog."""
    from pipeline.core.timestamps import parse_ts
    from pipeline.stream.rebill import plan_rebill
    from tests.integration.test_rebill import CATALOG, END, START, in_range

    lines = generate(2500, seed=4343, start="2024-06-06T22:00:00+08:00")
    msgs = messages(lines, partitions=1)
    epoch = uuid.uuid4().hex
    key = b"processor-edges-control-key-0123456789"
    worker = BatchProcessor(client, load_catalog(), epoch, auto_tick=False, control_key=key)
    worker.process(msgs)
    catalog_path = tmp_path / "no-free-quota.json"  # every line in range changes
    catalog_path.write_text(json.dumps({**json.loads(CATALOG.read_text()), "version": "no-free-quota", "free_quota_tokens": 0}))
    new_catalog = load_catalog(catalog_path)

    plan = plan_rebill(client, new_catalog, parse_ts(START), parse_ts(END), accounts=sorted(accounts_of(lines)))
    assert len({c.account_id for c in plan.changes}) >= 2
    late = _late_copy_of_a_billed_call(lines, plan)
    offset = len(msgs)
    assert worker.process([Message(0, offset, late["account_id"].encode(), json.dumps(late).encode())]).statuses["billed"] == 1
    rebill_msgs = [
        Message(0, offset + 1 + i, json.loads(r)["account_id"].encode(), sign_line(r, key))  # as `billing rebill` signs them
        for i, r in enumerate(plan.records())
    ]
    result = worker.process(rebill_msgs)
    assert result.reasons["stale_rebill"] == 1 and result.statuses["applied"] == len(rebill_msgs) - 1
    listed = [r for r in queries.rejected(client, late["account_id"]) if r["reason"] == "stale_rebill"]
    assert len(listed) == 1 and "run the same `billing rebill` again" in listed[0]["detail"]

    again = plan_rebill(client, new_catalog, parse_ts(START), parse_ts(END), accounts=sorted(accounts_of(lines)))
    assert {c.account_id for c in again.changes} == {late["account_id"]}  # only the refused account still differs
    offset += 1 + len(rebill_msgs)
    rerun = [Message(0, offset + i, json.loads(r)["account_id"].encode(), sign_line(r, key)) for i, r in enumerate(again.records())]
    assert worker.process(rerun).statuses["applied"] == len(rerun)
    fresh = expected(lines + [json.dumps(late)], catalog_path=catalog_path).bills
    got = bills_by_key(queries.bills(client), accounts_of(lines))
    assert {k: v for k, v in got.items() if in_range(k) and v["requests"] > 0} == {k: v for k, v in fresh.items() if in_range(k)}


def _late_copy_of_a_billed_call(lines: list[str], plan) -> dict:
    """Another call (new event_id) at the same instant as a call in a line the plan changes."""
    from pipeline.core.timestamps import hour_start, parse_ts

    changed = {(c.account_id, c.key[0], c.key[1], c.key[2]) for c in plan.changes if c.old is not None}
    for line in lines:
        body = json.loads(line)
        if body.get("type", "usage") != "usage" or body.get("channel", "api") != "api" or body.get("plugins"):
            continue
        try:
            hour = hour_start(parse_ts(body["timestamp"]))
        except Exception:
            continue
        if (body.get("account_id"), hour, body.get("api_key_id"), body.get("model")) in changed:
            return {**body, "event_id": body["event_id"] + "-late"}
    raise AssertionError("no billed call in a changed line")


def test_working_sets_load_in_chunks_with_the_same_bills(client, monkeypatch) -> None:
    """Big batches read their working sets from ClickHouse in chunks (the engine slows down a
    thousandfold on one bound list of over ~131,000 values). With tiny chunks, every load spans
    many queries: a restart before each batch makes every batch load its seen ids, lines and
    windows, and the bills, duplicates and rejections still equal the oracle."""
    from pipeline.store import statestore

    monkeypatch.setattr(statestore, "MAX_BOUND_VALUES", 7)
    lines = generate(1500, seed=4747)
    msgs = messages(lines)
    epoch = uuid.uuid4().hex
    for start in range(0, len(msgs), 300):
        BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(msgs[start : start + 300])
        BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(msgs[start : start + 300])  # redelivered
    want = expected(lines)
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == want.bills
    got_rejections = {
        (r["account_id"], r["event_id"], r["reason"]) for r in queries.rejected(client) if r["account_id"] in accounts_of(lines)
    }
    assert got_rejections == {(acc, event_id, reason) for acc, event_id, reason in want.rejections}


def test_a_server_gets_smaller_chunks_than_the_embedded_engine(client) -> None:
    """Over HTTP the bound values travel in the URL, which a server caps at 1 MiB by default; a
    chunk of 50,000 seen-id hashes would be refused there (about 1.1 MB)."""
    from types import SimpleNamespace

    from pipeline.store import statestore

    assert statestore._bound_limit(client) == statestore.MAX_BOUND_VALUES == 50_000
    server = SimpleNamespace(uri="http://clickhouse:8123/billing")
    assert statestore._bound_limit(server) == statestore.MAX_BOUND_VALUES_HTTP
    hashes = [2**64 - 1] * statestore.MAX_BOUND_VALUES_HTTP
    assert len(repr(hashes)) < 1024 * 1024 / 8  # the URL of one server chunk stays far below the cap


def test_a_big_batch_is_written_in_units_and_a_crash_between_units_loses_nothing(client, monkeypatch) -> None:
    """A batch is folded and written in units of at most `write_records` records. If the worker
    dies after some units are written (the batch's offsets are not acknowledged), the whole batch
    comes again: the written units are skipped, the rest applied, and the bills are exact."""
    from pipeline.store import sink

    lines = generate(2000, seed=4848)
    msgs = messages(lines)
    epoch = uuid.uuid4().hex
    real_send = sink.send
    writes = fail_nth_write(monkeypatch, 3, "worker killed mid-batch")
    with pytest.raises(ConnectionError):
        BatchProcessor(client, load_catalog(), epoch, auto_tick=False, write_records=250).process(msgs)
    assert writes[:2] == [250, 250]  # units of whole messages, at most 250 records each
    monkeypatch.setattr(sink, "send", real_send)

    again = BatchProcessor(client, load_catalog(), epoch, auto_tick=False, write_records=250).process(msgs)
    assert again.skipped == 500 and sum(again.statuses.values()) == len(msgs) - 500
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills


class ReadGuard:
    """The processor's client, refusing any read while a unit's write is in flight: one client
    serves both threads, and a read that overtook the write could miss that unit's rows."""

    def __init__(self, client) -> None:
        self._client = client
        self.in_flight = threading.Event()
        self.reads = 0
        self.reads_in_flight = 0

    def query(self, *args, **kwargs):
        self.reads += 1
        if self.in_flight.is_set():
            self.reads_in_flight += 1
        return self._client.query(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_no_read_overtakes_the_write_in_flight_and_bills_stay_exact(client, monkeypatch) -> None:
    """Write-behind: unit N is written on the sink thread while unit N+1 is parsed. Every read of
    unit N+1 (states, identities, lines, windows) must come after unit N's write, across
    redeliveries and restarts, or a duplicate in the next unit would be billed again."""
    from pipeline.store import sink

    lines = generate(3000, seed=5252)
    msgs = messages(lines)
    guard = ReadGuard(client)
    real_send = sink.send
    sends = []

    def slow_send(client_, encoded, *lanes) -> None:
        guard.in_flight.set()
        try:
            time.sleep(0.05)  # a slow server: gives a read the chance to overtake
            real_send(client_, encoded, *lanes)
            sends.append(threading.current_thread().name)
        finally:
            guard.in_flight.clear()

    monkeypatch.setattr(sink, "send", slow_send)
    epoch = uuid.uuid4().hex
    processor = BatchProcessor(guard, load_catalog(), epoch, auto_tick=False, write_records=200)
    waited = 0.0
    for start in range(0, len(msgs), 700):
        waited += processor.process(msgs[max(0, start - 100) : start + 700]).write_wait_s  # each batch redelivers 100
    assert len(sends) > 15 and all(name.startswith("billing-sink") for name in sends)
    assert guard.reads > 0 and guard.reads_in_flight == 0
    assert waited > 0.025 * len(sends)  # the 50 ms writes outlast parsing a unit: the wait is reported (worker /metrics)
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills


def test_a_failed_write_behind_the_next_unit_is_retried_on_the_same_worker(client, monkeypatch) -> None:
    """The second unit's write fails while the third unit is being parsed. The batch fails, the
    accounts whose states ran ahead of ClickHouse are reloaded, and the same worker, retrying the
    batch, bills it exactly (nothing skipped as if written, nothing applied twice)."""
    lines = generate(2000, seed=5353)
    msgs = messages(lines)
    calls = fail_nth_write(monkeypatch, 2, "ClickHouse went away (injected)")
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=250)
    with pytest.raises(ConnectionError, match="went away"):
        processor.process(msgs)
    assert calls == [250, 250]  # the failure surfaced before the third unit read anything or was written
    result = processor.process(msgs)
    assert result.skipped == 250  # only the first unit was written
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    assert_hour_totals_exact(client, accounts_of(lines))


AGGREGATES = ("bill_lines", "bill_hour_totals", "rate_windows")


def _fail_halfway(monkeypatch, nth: int, merge_first: bool = False, at: str = "account_state") -> None:
    """The sink's nth write stops at its insert into table `at`, after the inserts before it are
    in: at the account snapshots (the commit point), nothing past them is in; at `bill_lines`, the
    snapshots are in and the aggregates they carry are not. With `merge_first`, ClickHouse first
    merges the aggregate tables (a background merge can do that at any moment)."""
    from pipeline.store import sink

    real_send = sink.send
    sends: list[int] = []

    def half_send(client_, encoded, *lanes) -> None:
        sends.append(encoded.records)
        if len(sends) != nth:
            return real_send(client_, encoded, *lanes)
        for insert in encoded.inserts:
            if insert.table == at:
                if merge_first:
                    for table in AGGREGATES:
                        client_.command(f"OPTIMIZE TABLE {table} FINAL")
                raise ConnectionError("ClickHouse went away halfway through a unit (injected)")
            client_.raw_insert(insert.table, insert.columns, insert.body, settings=sink.INSERT_SETTINGS, fmt=sink.INSERT_FORMAT)

    monkeypatch.setattr(sink, "send", half_send)


def _roll_forward_fails(monkeypatch) -> list[bool]:
    """statestore.roll_forward raises (ClickHouse away) while the returned flag's first item is
    True; the partitions' roll forward (a worker taking a partition) still works."""
    from pipeline.store import statestore

    real = statestore.roll_forward
    away = [True]
    calls: list[bool] = []

    def roll_forward(client_, accounts) -> int:
        calls.append(away[0])
        if away[0]:
            raise ConnectionError("ClickHouse away during the roll forward (injected)")
        return real(client_, accounts)

    monkeypatch.setattr(statestore, "roll_forward", roll_forward)
    return away


def test_a_write_failing_halfway_is_taken_back_and_the_hour_totals_stay_exact(client, monkeypatch) -> None:
    """A unit's write fails after its lines and hour totals are in, before the snapshots that
    commit them: the rows past the commit points are deleted (statestore.roll_back), totals with
    lines, and the retry writes them again. A total left behind at a higher revision would win
    over the lines for ever."""
    lines = generate(2000, seed=5656)
    msgs = messages(lines)
    _fail_halfway(monkeypatch, 2)
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=250)
    with pytest.raises(ConnectionError, match="halfway"):
        processor.process(msgs[:1000])
    # taken back with the lines, before any retry: no total above its account's commit point
    beyond = client.query(
        "SELECT count() FROM bill_hour_totals AS t INNER JOIN (SELECT account_id, max(seq) AS committed FROM account_state "
        "GROUP BY account_id) AS c ON c.account_id = t.account_id WHERE t.revision > c.committed AND t.account_id IN {a:Array(String)}",
        parameters={"a": sorted(accounts_of(lines))},
    ).result_rows[0][0]
    assert beyond == 0
    processor.process(msgs)
    assert_hour_totals_exact(client, accounts_of(lines))


def test_a_merge_before_the_roll_back_loses_no_line(client, monkeypatch) -> None:
    lines = generate(2000, seed=5757)
    msgs = messages(lines)
    _fail_halfway(monkeypatch, 2, merge_first=True)
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=250)
    with pytest.raises(ConnectionError, match="halfway"):
        processor.process(msgs[:1000])
    processor.process(msgs)
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills


def test_a_write_failing_after_the_snapshots_is_rolled_forward_and_a_merge_loses_nothing(client, monkeypatch) -> None:
    """The second unit's snapshots land, then its write fails before the lines, after a merge of
    the aggregate tables. The accounts are committed at that unit (its records are not folded
    again); the failed batch's roll forward writes the unit's lines, totals and windows from the
    snapshots' redo, and the retry bills the rest: every line exact."""
    lines = generate(2000, seed=5858)
    msgs = messages(lines)
    _fail_halfway(monkeypatch, 2, merge_first=True, at="bill_lines")
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=250)
    with pytest.raises(ConnectionError, match="halfway"):
        processor.process(msgs[:1000])
    again = processor.process(msgs)
    assert again.skipped == 500  # the second unit was committed by its snapshots: not folded again
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    assert_hour_totals_exact(client, accounts_of(lines))


def test_accounts_left_in_doubt_are_rolled_forward_before_they_are_read_again(client, monkeypatch) -> None:
    """As above, and the roll forward after the failure fails too (ClickHouse still away): the
    worker remembers the accounts and rolls them forward before it loads them again; while that
    fails the batch fails, and no record is folded on top of them."""
    lines = generate(2000, seed=5959)
    msgs = messages(lines)
    _fail_halfway(monkeypatch, 2, merge_first=True, at="bill_lines")
    away = _roll_forward_fails(monkeypatch)
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=250)
    with pytest.raises(ConnectionError, match="halfway"):
        processor.process(msgs[:1000])
    with pytest.raises(ConnectionError, match="roll forward"):
        processor.process(msgs)  # still away: the retry stops before loading the accounts
    away[0] = False
    again = processor.process(msgs)
    assert again.skipped == 500
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    assert_hour_totals_exact(client, accounts_of(lines))


def test_a_restart_after_a_write_failing_after_the_snapshots_rolls_the_partitions_forward(client, monkeypatch) -> None:
    """The second unit's snapshots land, its aggregates do not, a merge runs, the roll forward
    fails and the worker dies (its memory of the accounts in doubt with it). A new worker on the
    same log epoch, given the same messages again, first rolls forward every snapshot written past
    its partition's progress row, and bills exactly."""
    lines = generate(2000, seed=9191)  # a seed no other test uses: the tests share one engine, and a seed names the accounts
    msgs = messages(lines)
    epoch = uuid.uuid4().hex
    _fail_halfway(monkeypatch, 2, merge_first=True, at="bill_lines")
    away = _roll_forward_fails(monkeypatch)
    with pytest.raises(ConnectionError, match="halfway"):
        BatchProcessor(client, load_catalog(), epoch, auto_tick=False, write_records=250).process(msgs[:1000])
    client.command("OPTIMIZE TABLE bill_lines FINAL")
    away[0] = False
    restarted = BatchProcessor(client, load_catalog(), epoch, auto_tick=False, write_records=250)
    again = restarted.process(msgs)
    assert again.skipped == 500
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    assert_hour_totals_exact(client, accounts_of(lines))


def test_a_rebill_reads_the_archive_in_pages_and_trims_as_it_replays(client, monkeypatch, tmp_path: Path) -> None:
    """A rebill reads the archive in pages (keyset on the log order) and drops lines and windows it
    no longer needs while it replays, so that its memory does not grow with an account's history.
    With pages of 7 records across two log epochs and two partitions, and a trim every 5 records,
    the plan is the one read in one page: no record lost, repeated or out of order."""
    from pipeline.core.timestamps import parse_ts
    from pipeline.stream import rebill
    from tests.integration.test_rebill import CATALOG, END, START

    lines = generate(2000, seed=5151, start="2024-06-06T22:00:00+08:00")
    half = len(lines) // 2
    for epoch, part in (("20240607T000000-a", lines[:half]), ("20240607T000001-b", lines[half:])):  # epochs sort in time order
        BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(messages(part))
    catalog_path = tmp_path / "no-free-quota.json"  # every line in range changes
    catalog_path.write_text(json.dumps({**json.loads(CATALOG.read_text()), "version": "no-free-quota", "free_quota_tokens": 0}))
    catalog = load_catalog(catalog_path)
    accounts = sorted(accounts_of(lines))

    def plan() -> tuple:
        p = rebill.plan_rebill(client, catalog, parse_ts(START), parse_ts(END), accounts=accounts, run_id="same")
        changes = [(c.account_id, c.key, c.old, c.new) for c in p.changes]
        return p.records_read, changes, sorted(p.now_billed), p.clocks

    whole = plan()
    assert whole[0] == len(lines) and whole[1], "every archived record replayed, and lines change"
    monkeypatch.setattr(rebill, "LOG_PAGE_ROWS", 7)
    monkeypatch.setattr(rebill, "TRIM_EVERY", 5)
    assert plan() == whole


def test_later_units_of_a_batch_see_what_earlier_units_claimed_before_it_is_written(client) -> None:
    """A unit's rows reach ClickHouse while the next unit is folded, so that unit's reads cannot
    find them there: repeats, conflicting repeats and late calls for an hour the account has
    long left, arriving units after the originals in the same batch, must still be judged
    against the earlier units (kept in memory until the batch is written)."""
    lines = generate(1500, seed=5454)
    refused = {event_id for _, event_id, _ in expected(lines).rejections}
    usages = [
        body
        for body in map(json.loads, lines[:300])
        if body.get("type", "usage") == "usage" and body.get("event_id") not in refused | {None} and body["model"] == "xingchen-base"
    ][:30]  # billed calls
    late = [json.dumps({**usages[0], "event_id": f"late-{i}"}) for i in range(50)]  # new calls of one account in its first hour
    again = [json.dumps(body) for body in usages]  # the same calls again: duplicate deliveries
    changed = [json.dumps({**body, "output_tokens": body.get("output_tokens", 0) + 1}) for body in usages]  # same ids, other payloads
    lines = lines + late + again + changed
    hours = {json.loads(line)["timestamp"][:13] for line in lines if "timestamp" in json.loads(line)}
    assert len(hours) > 2  # the originals' hours are behind the accounts' latest by the time the repeats come
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=50)
    result = processor.process(messages(lines))  # one batch of about 33 units: the repeats come 25-30 units after their originals
    assert sum(result.statuses.values()) == len(lines)
    want = expected(lines)
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == want.bills
    got_rejections = {
        (r["account_id"], r["event_id"], r["reason"]) for r in queries.rejected(client) if r["account_id"] in accounts_of(lines)
    }
    assert got_rejections == {(acc, event_id, reason) for acc, event_id, reason in want.rejections}
    assert result.statuses["duplicate"] >= len(usages)
    late_refused = [r for r in want.rejections if r[1].startswith("late-")]
    assert not late_refused  # the late calls are billed into the old hour's lines


@pytest.mark.parametrize(("cached", "seed"), [(100_000, 5717), (4, 5718)])  # a seed each: one engine for all tests
def test_reads_beside_a_slow_write_bill_exactly_on_the_real_engine(
    client, inprocess_dir: Path, monkeypatch, cached: int, seed: int
) -> None:
    """The worker's mode (stream/app.py): the processor's reads on a client of their own, run
    beside the write in flight where nothing they read can be in it (processor._reads_beside),
    and each batch's last write left in flight. With every write slowed down, reads do run beside
    writes; across redeliveries, records sent again in new messages right behind writes that have
    not landed, late calls for old hours and restarts (and with 4 cached states, accounts evicted
    while their write is in flight), the bills equal the oracle's and no account-hour total counts
    anything twice."""
    import random

    from pipeline.settings import Settings
    from pipeline.store import sink
    from pipeline.store.chclient import connect
    from pipeline.store.storage import ClickHouseStorage

    lines = generate(3000, seed=seed)
    msgs = messages(lines)
    # the log: records 1000-1399 sent again in new messages right after 1399 (a gateway's retry,
    # told apart from new calls only by the records' identities), offsets numbered per partition
    offsets: dict[int, int] = {}
    log = []
    for m in msgs[:1400] + msgs[1000:1400] + msgs[1400:]:
        offset = offsets[m.partition] = offsets.get(m.partition, -1) + 1
        log.append(Message(m.partition, offset, m.key, m.value))
    in_flight = threading.Event()
    beside: list[int] = []
    real_send = sink.send

    def slow_send(client_, encoded, *lanes) -> None:
        in_flight.set()
        try:
            time.sleep(0.05)  # a slow server: the reads of the next unit run meanwhile
            real_send(client_, encoded, *lanes)
        finally:
            in_flight.clear()

    monkeypatch.setattr(sink, "send", slow_send)
    reader = connect(Settings(data_dir=inprocess_dir).clickhouse_url)
    real_query = reader.query

    def counted_query(*args, **kwargs):
        if in_flight.is_set():
            beside.append(1)
        return real_query(*args, **kwargs)

    reader.query = counted_query  # type: ignore[method-assign]
    epoch = uuid.uuid4().hex
    rng = random.Random(7)

    def worker() -> BatchProcessor:
        return BatchProcessor(
            client,
            load_catalog(),
            epoch,
            auto_tick=False,
            write_records=150,
            max_cached_accounts=cached,
            storage=ClickHouseStorage(client, reader=reader),
        )

    processor, position = worker(), 0
    try:
        while position < len(log):
            size = rng.randint(50, 600)
            start = max(0, position - rng.randint(0, 40))  # redeliver a little of what went before
            processor.process(log[start : position + size], leave_last_write=True)
            position += size
            if rng.random() < 0.15:
                processor.close()  # a restart: the last write in, then all memory lost
                processor = worker()
        processor.close()
    finally:
        reader.close()
    assert beside, "no read ran beside a write"
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    assert_hour_totals_exact(client, accounts_of(lines))
