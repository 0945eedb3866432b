"""A batch's last write left in flight while the next batch starts (`leave_last_write`): the next
batch reads nothing before that write is in, a failure of it is found and both batches bill
exactly, and the worker finishes a failed last write even when no batch comes after it."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.batch.processor import BatchProcessor, EarlierWriteFailed
from pipeline.core.catalog import load_catalog
from pipeline.demo.workload import generate
from pipeline.ingest.publish import publish_lines
from pipeline.settings import Settings
from pipeline.store import queries, sink
from pipeline.store.chclient import connect
from pipeline.store.reader import ApiReader
from tests.integration.stack import bills_by_key
from tests.integration.test_clickhouse_outage import committed_total
from tests.integration.test_pipeline import accounts_of
from tests.integration.test_processor_edges import ReadGuard, fail_nth_write, messages
from tests.integration.test_two_workers import Replica, wait_until
from tests.oracle import expected

pytestmark = pytest.mark.integration


def hold_writes(monkeypatch: pytest.MonkeyPatch, in_flight: threading.Event | None = None) -> threading.Event:
    """Every write waits (up to 10 s) for the returned gate to open; `in_flight` is set meanwhile."""
    gate = threading.Event()
    real_send = sink.send

    def gated_send(client_: Any, encoded: sink.Encoded, *lanes: Any) -> None:
        if in_flight is not None:
            in_flight.set()
        try:
            gate.wait(10)
            real_send(client_, encoded, *lanes)
        finally:
            if in_flight is not None:
                in_flight.clear()

    monkeypatch.setattr(sink, "send", gated_send)
    return gate


def test_the_next_batch_parses_beside_the_last_write_and_reads_only_after_it(client, monkeypatch) -> None:
    """Each batch is one unit; its write is held until a timer opens the gate, after `process`
    has returned. The next batch must not read anything before that write is in (it would miss
    the batch's claims and bill a repeat twice), and the bills must match the oracle."""
    lines = generate(2400, seed=6161)
    msgs = messages(lines)
    guard = ReadGuard(client)
    gate = hold_writes(monkeypatch, guard.in_flight)
    processor = BatchProcessor(guard, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=100_000)
    results = []
    for start in range(0, len(msgs), 400):
        gate.clear()
        result = processor.process(msgs[max(0, start - 50) : start + 400], leave_last_write=True)  # each batch redelivers 50
        assert not result.written.done(), "process returned with its last write still in flight"
        results.append(result)
        threading.Timer(0.1, gate.set).start()
    processor.wait_for_writes()
    assert all(r.written.done() and r.written.exception() is None for r in results)
    assert guard.reads > 0 and guard.reads_in_flight == 0
    assert sum(r.skipped for r in results) == 50 * (len(results) - 1)
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    processor.close()


def test_a_read_between_writes_waits_for_the_write_before_it_and_sees_it_whole(client, monkeypatch) -> None:
    """The worker's API reads between two writes: a query made while a batch's last write is
    held must wait for it and then see every bill of that batch, as the oracle says."""
    lines = generate(1200, seed=6060)
    gate = hold_writes(monkeypatch)
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=100_000)
    try:
        result = processor.process(messages(lines), leave_last_write=True)  # one unit: its write is held
        read = processor.read_between_writes(lambda: queries.bills(client))
        time.sleep(0.3)
        assert not read.done(), "the read ran before the write made ahead of it"
        gate.set()
        assert bills_by_key(read.result(10), accounts_of(lines)) == expected(lines).bills
        assert result.written.done()
    finally:
        gate.set()
        processor.close()


@pytest.mark.parametrize("order", ["next batch first", "failed batch first"])
def test_a_failed_last_write_fails_the_next_batch_and_both_bill_exactly_again(client, monkeypatch, order: str) -> None:
    """The first batch's last write fails after `process` returned. Whichever comes first (the
    next batch finding the failure, or the owner processing the failed batch again), nothing of
    the next batch is applied before the failed one is, and the accounts whose states ran ahead
    of ClickHouse are reloaded: nothing skipped as if written, nothing billed twice."""
    lines = generate(1600, seed=6262)
    msgs = messages(lines)
    first, second = msgs[:800], msgs[800:]
    writes = fail_nth_write(monkeypatch, 1, "ClickHouse went away (injected)")
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=100_000)
    failed = processor.process(first, leave_last_write=True)
    with pytest.raises(ConnectionError, match="went away"):
        failed.written.result(10)
    if order == "next batch first":
        with pytest.raises(EarlierWriteFailed):
            processor.process(second, leave_last_write=True)
        again = processor.process(first)
    else:
        with pytest.raises(EarlierWriteFailed):  # the failure is raised once, to whoever comes next
            processor.process(first)
        again = processor.process(first)
    assert again.skipped == 0 and sum(again.statuses.values()) == len(first)
    after = processor.process(second, leave_last_write=True)
    assert after.skipped == 0 and sum(after.statuses.values()) == len(second)
    after.written.result(10)
    assert len(writes) == 3
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills
    processor.close()


class FailWrites:
    """The real sink, failing the next `n` writes after `fail_next(n)`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._remaining = 0
        self.failures = 0
        self.real = sink.send

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._remaining = n

    def send(self, client_: Any, encoded: sink.Encoded, *lanes: Any) -> None:
        with self._lock:
            failing = self._remaining > 0
            if failing:
                self._remaining -= 1
                self.failures += 1
        if failing:
            raise ConnectionError("ClickHouse is unreachable (injected)")
        self.real(client_, encoded, *lanes)


@pytest.fixture
def flaky_worker(broker: str, inprocess_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    flaky = FailWrites()
    monkeypatch.setattr(sink, "send", flaky.send)
    name = request.node.name[-20:].strip("_[]")
    settings = Settings(data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id=f"billing-{name}", log_epoch=name)
    worker = Replica(settings, broker, "worker")
    try:
        wait_until(lambda: worker.partitions(), 60, "the worker to own partitions")
        yield flaky, worker, settings
    finally:
        worker.stop()
    assert worker.error is None, worker.error


def test_a_worker_finishes_a_failed_last_write_with_no_batch_after_it(broker: str, flaky_worker) -> None:
    """Nothing more arrives after the batch whose last write fails: the worker must still process
    it again, bill it exactly and commit its offsets (nobody else will find the failure)."""
    flaky, worker, settings = flaky_worker
    lines = generate(1500, seed=6363)
    reader = connect(settings.clickhouse_url)
    flaky.fail_next(1)
    report = publish_lines([x.encode() for x in lines], broker, settings.input_topic, quiet=True)
    published = sum(last + 1 for last in report.offsets.values())
    wait_until(lambda: flaky.failures == 1, 60, "the injected failure")
    wait_until(lambda: committed_total(broker, settings.app_id) == published, 60, "every offset committed")
    assert bills_by_key(queries.bills(reader), accounts_of(lines)) == expected(lines).bills
    assert worker.worker.stats["batch_failures"] == 1


def test_a_batch_arriving_while_a_failed_one_is_retried_waits_for_it(broker: str, flaky_worker) -> None:
    """The first batch's last write fails and so does its first retry; the second batch arrives
    during the retry's backoff, when the processor has already forgotten the failure. Billed
    first, it would move its accounts' log positions past the first batch, whose records would
    then be skipped as applied: the bills must still be exact."""
    flaky, worker, settings = flaky_worker
    lines = generate(3000, seed=6464)
    reader = connect(settings.clickhouse_url)
    flaky.fail_next(2)
    publish_lines([x.encode() for x in lines[:1500]], broker, settings.input_topic, quiet=True)
    wait_until(lambda: flaky.failures == 2, 60, "the last write and its first retry failing")
    report = publish_lines([x.encode() for x in lines[1500:]], broker, settings.input_topic, quiet=True)
    wait_until(
        lambda: committed_total(broker, settings.app_id) == sum(last + 1 for last in report.offsets.values()), 60, "every offset committed"
    )
    assert bills_by_key(queries.bills(reader), accounts_of(lines)) == expected(lines).bills
    assert worker.worker.stats["batch_failures"] == 2


def test_the_api_answers_while_a_batch_is_being_folded(broker: str, flaky_worker) -> None:
    """A query waits for the writes before it, not for the batch the ClickHouse thread is folding
    (held here): `billing bills` answers during a long batch, with everything already billed."""
    _, worker, settings = flaky_worker
    lines = generate(600, seed=6565)
    report = publish_lines([x.encode() for x in lines], broker, settings.input_topic, quiet=True)
    wait_until(
        lambda: committed_total(broker, settings.app_id) == sum(last + 1 for last in report.offsets.values()), 60, "every offset committed"
    )
    wait_until(lambda: worker.worker.api_url is not None, 30, "the worker's API")
    folding = threading.Event()
    worker.worker._db.submit(folding.wait, 60)  # the ClickHouse thread is busy with a batch
    try:
        rows = ApiReader(worker.worker.api_url, timeout_s=20).bills(None, None, None)
    finally:
        folding.set()
    assert bills_by_key(rows, accounts_of(lines)) == expected(lines).bills
