"""ClickHouse failing for a while: the worker backs off, commits nothing past what was written,
keeps a bounded backlog, and catches up with exact bills when ClickHouse returns."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from pipeline.demo.workload import generate
from pipeline.ingest.publish import publish_lines
from pipeline.settings import Settings
from pipeline.store import queries, sink
from pipeline.store.chclient import connect
from tests.integration.stack import bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.integration.test_two_workers import Replica, barrier, wait_until
from tests.oracle import expected

pytestmark = pytest.mark.integration


class FlakySink:
    """The real sink, failing every write while `down` is set, as an unreachable server would."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.failures = 0
        self.real = sink.send

    def send(self, client: Any, encoded: sink.Encoded, *lanes: Any) -> None:
        if self.down.is_set():
            self.failures += 1
            raise ConnectionError("ClickHouse is unreachable (injected)")
        self.real(client, encoded, *lanes)


def committed_total(bootstrap: str, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == "billing.input" and meta.offset > 0)
    finally:
        admin.close()


def test_worker_backs_off_and_catches_up(broker: str, inprocess_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = FlakySink()
    monkeypatch.setattr(sink, "send", flaky.send)
    settings = Settings(data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id="billing-outage", log_epoch="outage")
    lines = generate(8000, seed=8)
    reader = connect(settings.clickhouse_url)
    worker = Replica(settings, broker, "worker")
    try:
        wait_until(lambda: worker.partitions(), 60, "the worker to own partitions")
        publish_lines([x.encode() for x in lines[:2000]], broker, settings.input_topic, quiet=True)
        barrier(broker, settings, reader)
        time.sleep(2)  # let the commit interval pass
        written = queries.summary(reader)["records"]
        committed_before = committed_total(broker, settings.app_id)

        flaky.down.set()
        tracemalloc.start()
        publish_lines([x.encode() for x in lines[2000:]], broker, settings.input_topic, quiet=True)
        wait_until(lambda: flaky.failures >= 4, 60, "retries against the failing sink")
        _, peak_early = tracemalloc.get_traced_memory()
        time.sleep(6)  # stays down: retries back off, nothing is committed past what was written
        assert queries.summary(reader)["records"] == written
        assert committed_total(broker, settings.app_id) <= committed_before + settings.partitions  # barrier records at most
        failures = flaky.failures
        assert failures < 20, "retries must back off, not spin"
        _, peak_late = tracemalloc.get_traced_memory()
        assert peak_late < peak_early + 50_000_000, "the backlog must stay bounded while ClickHouse is down"
        tracemalloc.stop()
        # every failed write is counted once (the worker counts it a moment after the sink raised)
        wait_until(lambda: worker.worker.stats["batch_failures"] == flaky.failures, 5, "the failures counted")

        flaky.down.clear()  # ClickHouse is back
        barrier(broker, settings, reader)
    finally:
        worker.stop()
    assert worker.error is None, worker.error
    assert bills_by_key(queries.bills(reader), accounts_of(lines)) == expected(lines).bills
