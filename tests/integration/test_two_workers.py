"""Two workers in one consumer group on the local broker: partitions split, a stopping worker
hands its partitions over, and the bills stay exact.

Both workers run in this test's process because the embedded ClickHouse (chdb) belongs to one
process; each has its own Faust app, consumer, ClickHouse client and thread, as two replicas do.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.batch.processor import barrier_message
from pipeline.demo.workload import generate
from pipeline.ingest.publish import publish_lines
from pipeline.runtime import control_key
from pipeline.settings import Settings
from pipeline.store import queries
from pipeline.store.chclient import connect
from pipeline.stream.app import Worker
from tests.integration.stack import bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.oracle import expected

pytestmark = pytest.mark.integration


class Replica:
    """One worker replica on its own event loop thread."""

    def __init__(self, settings: Settings, bootstrap: str, name: str) -> None:
        self.name = name
        self.worker = Worker(settings, bootstrap, settings.log_epoch)
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        try:
            self.loop.run_until_complete(self.worker.serve(self.stop_event))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def partitions(self) -> set[int]:
        return self.worker.assigned_partitions()

    def stop(self) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)
        assert not self.thread.is_alive(), f"{self.name} did not stop"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def barrier(bootstrap: str, settings: Settings, client) -> None:
    from kafka import KafkaProducer

    barrier_id = uuid.uuid4().hex
    key = control_key(settings.data_dir, settings.control_key, create=True)  # the workers' (same data dir)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for p in range(settings.partitions):
        producer.send(settings.input_topic, value=barrier_message(barrier_id, key), partition=p)
    producer.flush()
    producer.close()
    wait_until(lambda: queries.barrier_partitions(client, barrier_id) == settings.partitions, 120, "the barrier")


def test_two_workers_split_partitions_and_hand_over(
    broker: str, inprocess_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a worker keeps everything in its data dir, nothing in the cwd
    settings = Settings(data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id="billing-two-workers", log_epoch="two-workers")
    lines = generate(6000, seed=77)
    first, rest = lines[:3000], lines[3000:]
    # its reads after each write (BILLING_READS_BESIDE_WRITES=0), one client for everything
    a = Replica(settings.with_(reads_beside_writes=False), broker, "worker-a")
    # its units' inserts side by side, its reads beside the write in flight (the default)
    b = Replica(settings.with_(insert_lanes=3), broker, "worker-b")
    reader = connect(settings.clickhouse_url)
    try:
        wait_until(lambda: a.partitions() and b.partitions(), 60, "both workers to own partitions")
        assert a.partitions() | b.partitions() == set(range(settings.partitions))
        assert not a.partitions() & b.partitions()

        publish_lines([x.encode() for x in first], broker, settings.input_topic, quiet=True)
        barrier(broker, settings, reader)

        a.stop()  # hands its partitions to b
        assert a.error is None, a.error
        wait_until(lambda: b.partitions() == set(range(settings.partitions)), 60, "worker-b to take over every partition")

        publish_lines([x.encode() for x in rest], broker, settings.input_topic, quiet=True)
        barrier(broker, settings, reader)
    finally:
        b.stop()
        if a.thread.is_alive():
            a.stop()
    assert b.error is None, b.error

    want = expected(lines)
    got = bills_by_key(queries.bills(reader), accounts_of(lines))
    assert got == want.bills
    assert list(cwd.iterdir()) == []


def test_workers_stopping_and_starting_repeatedly_keep_bills_exact(broker: str, inprocess_dir: Path) -> None:
    """One worker comes and goes during the workload, the first time before anything was
    committed; every rebalance hands accounts over through ClickHouse."""
    settings = Settings(data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id="billing-churn", log_epoch="churn")
    lines = generate(9000, seed=78)
    chunks = [lines[i : i + 1500] for i in range(0, len(lines), 1500)]
    reader = connect(settings.clickhouse_url)
    steady = Replica(settings, broker, "steady")
    publish_lines([x.encode() for x in chunks[0]], broker, settings.input_topic, quiet=True)
    churn = Replica(settings, broker, "churn-0")  # joins while the first records are in flight
    try:
        for n, chunk in enumerate(chunks[1:], start=1):
            publish_lines([x.encode() for x in chunk], broker, settings.input_topic, quiet=True)
            time.sleep(0.5)
            churn.stop()
            assert churn.error is None, churn.error
            churn = Replica(settings, broker, f"churn-{n}")
        barrier(broker, settings, reader)
    finally:
        churn.stop()
        steady.stop()
    assert steady.error is None and churn.error is None, (steady.error, churn.error)
    assert bills_by_key(queries.bills(reader), accounts_of(lines)) == expected(lines).bills
