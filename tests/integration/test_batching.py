"""take_batches on the real broker: batches of at most `max_` in log order, every event once, and
an offset committed only after its batch was handled (a crash mid-batch redelivers the batch)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import faust
import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from pipeline.ingest.broker import ensure_topics
from pipeline.stream.app import leave_group_at_generation_zero
from pipeline.stream.batching import take_batches
from tests.integration.test_two_workers import wait_until

pytestmark = pytest.mark.integration
MESSAGES, MAX = 25, 10


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)
    finally:
        admin.close()
    meta = offsets.get(group, {}).get(TopicPartition(topic, 0))
    return None if meta is None or meta.offset < 0 else meta.offset


def _published(broker: str) -> tuple[str, str]:
    topic, group = f"batching-{uuid.uuid4().hex[:8]}", f"batching-test-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, {topic: 1})
    producer = KafkaProducer(bootstrap_servers=broker)
    for i in range(MESSAGES):
        producer.send(topic, value=str(i).encode(), partition=0)
    producer.flush()
    producer.close()
    return topic, group


@contextmanager
def _running(broker: str, topic: str, group: str, agent: Callable[[faust.StreamT], Awaitable[None]], datadir: Path) -> Iterator[None]:
    """A Faust app consuming `topic` with `agent`, on its own event loop thread."""
    leave_group_at_generation_zero()
    app = faust.App(
        group,
        broker=f"kafka://{broker}",
        store="memory://",
        datadir=str(datadir),
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_commit_interval=0.2,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        web_enabled=False,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=1)
    app.agent(source)(agent)
    loop = asyncio.new_event_loop()
    stop = threading.Event()

    async def serve() -> None:
        await app.start()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await app.stop()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


def test_batches_are_bounded_ordered_complete_and_committed_only_once_handled(broker: str, tmp_path: Path) -> None:
    topic, group = _published(broker)
    batches: list[list[int]] = []
    release = threading.Event()

    async def handle(stream: faust.StreamT) -> None:
        async for events in take_batches(stream, MAX, 0.3):
            batches.append([e.message.offset for e in events])
            if len(batches) == 2:  # the second batch is being handled until the test says so
                while not release.is_set():
                    await asyncio.sleep(0.05)

    try:
        with _running(broker, topic, group, handle, tmp_path):
            wait_until(lambda: len(batches) >= 2, 60, "two batches")
            time.sleep(1.5)  # several commit intervals while the second batch is still being handled
            assert _committed(broker, group, topic) == len(batches[0])  # the first batch only
            release.set()
            wait_until(lambda: sum(map(len, batches)) == MESSAGES, 30, "every message")
            wait_until(lambda: _committed(broker, group, topic) == MESSAGES, 30, "the last commit")
    finally:
        release.set()
    assert all(len(batch) <= MAX for batch in batches)
    assert [offset for batch in batches for offset in batch] == list(range(MESSAGES))


def test_with_acks_left_to_the_caller_nothing_is_committed_until_it_acks(broker: str, tmp_path: Path) -> None:
    """auto_ack=False (the worker's way: a batch's last write is still running when the next batch
    is taken): asking for the next batches acknowledges nothing; the caller's acks do, in order."""
    topic, group = _published(broker)
    held: list[Any] = []
    release = threading.Event()

    async def handle(stream: faust.StreamT) -> None:
        async for events in take_batches(stream, MAX, 0.3, auto_ack=False):
            held.extend(events)
            if len(held) == MESSAGES:
                while not release.is_set():
                    await asyncio.sleep(0.05)
                for event in held:
                    await stream.ack(event)

    try:
        with _running(broker, topic, group, handle, tmp_path):
            wait_until(lambda: len(held) == MESSAGES, 60, "every batch handed out")
            time.sleep(1.5)  # several commit intervals with every batch handed out and none acked
            assert _committed(broker, group, topic) is None
            release.set()
            wait_until(lambda: _committed(broker, group, topic) == MESSAGES, 30, "the commit after the acks")
    finally:
        release.set()
    assert [event.message.offset for event in held] == list(range(MESSAGES))
