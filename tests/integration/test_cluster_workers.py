"""Issue 21 with running workers on the embedded broker: partitions that appear under a running
worker, the drained switch-over to a grown topic (157), and outputs that are not delivered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from pipeline.cli.commands import wait_for
from pipeline.ingest.broker import ensure_topics
from pipeline.ingest.publish import publish_lines
from pipeline.settings import Settings
from pipeline.store import queries, statestore
from pipeline.store.chclient import connect
from pipeline.stream.partitioning import PartitionMismatch, confirm_drained, partition_for
from tests.integration.test_two_workers import Replica, wait_until

pytestmark = pytest.mark.integration


class Reader:
    """What `billing drained` / `billing wait` read, straight from the shared engine."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def barrier_partitions(self, barrier: str) -> int:
        return queries.barrier_partitions(self.client, barrier)


def recharge(account: str, amount: str, minute: int) -> bytes:
    return json.dumps(
        {"type": "credit.recharge", "account_id": account, "amount": amount, "timestamp": f"2026-03-01T10:{minute:02d}:00+08:00"}
    ).encode()


class QuickMetadataReplica(Replica):
    """A replica whose consumer refreshes topic metadata every second (aiokafka's default is five
    minutes), so that the partition change reaches it within the test."""

    def __init__(self, settings: Settings, bootstrap: str, name: str) -> None:
        from pipeline.stream.app import Worker

        self.name = name
        self.worker = Worker(settings, bootstrap, settings.log_epoch)
        self.worker.app.conf.consumer_metadata_max_age_ms = 1000
        self.loop = asyncio.new_event_loop()
        self.stop_event = None
        self.error = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()


def test_partitions_appearing_under_a_running_worker_stop_it(broker: str, inprocess_dir: Path) -> None:
    """Tansu has no CreatePartitions: the topic is re-created with 6 partitions while the worker
    (configured for 4) runs. The rebalance hands it partitions 4 and 5, and it stops loudly."""
    settings = Settings(
        data_dir=inprocess_dir,
        kafka=broker,
        auto_tick=False,
        app_id="billing-grown-live",
        log_epoch=f"live-{uuid.uuid4().hex[:6]}",
        topic_prefix=f"live{uuid.uuid4().hex[:6]}",
    )
    worker = QuickMetadataReplica(settings, broker, "worker")
    try:
        wait_until(lambda: worker.partitions() == {0, 1, 2, 3}, 60, "the worker to own the 4 partitions")
        admin = KafkaAdminClient(bootstrap_servers=broker)
        admin.delete_topics([settings.input_topic])
        admin.close()
        time.sleep(0.5)
        ensure_topics(broker, {settings.input_topic: 6})
        wait_until(lambda: not worker.thread.is_alive(), 90, "the worker to stop")
        assert isinstance(worker.error, PartitionMismatch), repr(worker.error)
        assert "configured for 4 partitions" in str(worker.error)
    finally:
        if worker.thread.is_alive():
            worker.stop()


def test_growing_by_a_new_topic_after_a_drained_switch_over_gives_157(broker: str, inprocess_dir: Path) -> None:
    account = f"acct-grow-{uuid.uuid4().hex[:6]}"
    prefix = f"grow{uuid.uuid4().hex[:6]}"
    old = Settings(data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id=f"billing-{prefix}", topic_prefix=prefix)
    client = connect(old.clickhouse_url)
    first = Replica(old, broker, "old-layout")
    try:
        wait_until(lambda: first.partitions(), 60, "the worker to own partitions")
        publish_lines([recharge(account, "100", 0), recharge(account, "7", 1)], broker, old.input_topic, quiet=True)
        # publishers switch to the grown topic; its records wait there until the old topic is drained
        grown = old.with_(partitions=12, input_topic_name=f"{prefix}.input.v2")
        ensure_topics(broker, {grown.input_topic: 12})
        publish_lines([recharge(account, "50", 2)], broker, grown.input_topic, quiet=True)
        assert confirm_drained(Reader(client), broker, old, old.input_topic, 120, wait_for)
        assert statestore.load_states(client, [account])[account].cash_balance == Decimal("107")
    finally:
        first.stop()
    second = Replica(grown, broker, "grown-layout")  # BILLING_INPUT_TOPIC, BILLING_PARTITIONS=12, epoch auto
    try:
        wait_until(lambda: second.partitions(), 60, "the grown worker to own partitions")
        assert second.worker.epoch != first.worker.epoch and second.worker.epoch.startswith("tansu_cluster/")
        wait_for(Reader(client), broker, grown, 120)
        assert statestore.load_states(client, [account])[account].cash_balance == Decimal("157")
        assert second.error is None
    finally:
        second.stop()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
    finally:
        admin.close()


def test_outputs_not_delivered_keep_the_offsets_uncommitted(broker: str, inprocess_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Violations that the broker does not acknowledge: the batch's offsets are not committed
    until they are; then every violation is on its topic. (Not with the idempotent producer:
    Tansu answers aiokafka's InitProducerId with UnknownError, measured.)"""
    from aiokafka import AIOKafkaProducer
    from kafka.errors import KafkaConnectionError

    prefix = f"out{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=inprocess_dir,
        kafka=broker,
        auto_tick=False,
        app_id=f"billing-{prefix}",
        topic_prefix=prefix,
        log_epoch=f"outputs-{prefix}",
    )
    failing = threading.Event()
    refused: list[str] = []
    real_send_batch = AIOKafkaProducer.send_batch

    async def send_batch(self: Any, batch: Any, topic: str, *, partition: int) -> Any:
        """The worker publishes its outputs as record batches (stream/record_batches.py)."""
        if failing.is_set() and topic == settings.violations_topic:
            refused.append(topic)
            future = asyncio.get_running_loop().create_future()
            future.set_exception(KafkaConnectionError("broker unreachable (injected)"))
            return future
        return await real_send_batch(self, batch, topic, partition=partition)

    monkeypatch.setattr(AIOKafkaProducer, "send_batch", send_batch)
    account = f"acct-out-{uuid.uuid4().hex[:6]}"
    home = partition_for(account.encode(), settings.partitions)
    ts = "2026-03-01T10:00:00+08:00"
    records = [{"type": "api_key.created", "account_id": account, "api_key_id": "k1", "timestamp": ts}] + [
        {
            "account_id": account,
            "event_id": f"{account}-e{i}",
            "api_key_id": "k1",
            "model": "xingchen-lite",
            "input_tokens": 10,
            "output_tokens": 10,
            "timestamp": ts,
        }
        for i in range(3)
    ]  # qps 1: two violations
    worker = Replica(settings, broker, "worker")
    try:
        wait_until(lambda: worker.partitions(), 60, "the worker to own partitions")
        failing.set()
        publish_lines([json.dumps(r).encode() for r in records], broker, settings.input_topic, quiet=True)
        wait_until(lambda: len(refused) >= 2, 60, "the violations message refused twice")
        client = connect(settings.clickhouse_url)
        assert (
            client.query("SELECT count() FROM rate_violations WHERE account_id = {a:String}", parameters={"a": account}).result_rows[0][0]
            == 2
        )  # billed and written...
        time.sleep(3)  # three commit intervals
        assert committed(broker, settings.app_id, settings.input_topic).get(home, 0) == 0  # ...but not committed
        failing.clear()
        wait_until(
            lambda: committed(broker, settings.app_id, settings.input_topic).get(home, 0) >= 1,
            60,
            "the offsets to be committed once the violations are delivered",
        )
        assert worker.worker.stats["output_send_failures"] >= 2
    finally:
        worker.stop()
    consumer = KafkaConsumer(
        settings.violations_topic, bootstrap_servers=broker, auto_offset_reset="earliest", consumer_timeout_ms=3000, group_id=None
    )
    delivered = [json.loads(m.value) for m in consumer]
    consumer.close()
    mine = {(v["event_id"], v["limit"]) for m in delivered if m["account_id"] == account for v in m["violations"]}
    assert len(mine) == 2, delivered


def test_a_stop_while_a_batch_publishes_its_outputs_is_a_stop_not_a_crash(
    broker: str, inprocess_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust stops its producer while the last batches still complete: their outputs cannot be
    published any more (NotReady). The worker stops cleanly (no crash), and the batch, not
    acknowledged, is read again at the next start, where its outputs are published again."""
    from faust.exceptions import NotReady

    from pipeline.stream.app import Worker

    prefix = f"stop{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id=f"billing-{prefix}", topic_prefix=prefix, log_epoch=f"stop-{prefix}"
    )
    held: list[str] = []

    async def publish_outputs(self: Any, result: Any) -> None:
        held.append("held")
        while not self.stopping:  # the batch completes only once the stop has begun...
            await asyncio.sleep(0.01)
        raise NotReady("Producer service not yet started")  # ...when Faust's producer is gone

    account = f"acct-stop-{uuid.uuid4().hex[:6]}"
    worker = Replica(settings, broker, "worker")
    try:
        wait_until(lambda: worker.partitions(), 60, "the worker to own partitions")
        monkeypatch.setattr(Worker, "publish_outputs", publish_outputs)
        publish_lines([recharge(account, "5", 0)], broker, settings.input_topic, quiet=True)
        wait_until(lambda: held, 60, "a batch publishing its outputs")
    finally:
        worker.stop()
    assert worker.error is None and worker.worker.app.crash_reason is None
    home = partition_for(account.encode(), settings.partitions)
    assert committed(broker, settings.app_id, settings.input_topic).get(home, 0) == 0  # read again at the next start
