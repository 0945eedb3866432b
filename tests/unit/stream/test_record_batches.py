"""A batch's outputs as Kafka record batches (pipeline/stream/record_batches.py), with aiokafka's
own batch builder: what the broker receives is what was published, on the key's partition, in
order, and a resend is the same batch again."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from pipeline.stream.partitioning import partition_for
from pipeline.stream.record_batches import Chunk, chunks

PARTITIONS = {"violations": 8, "status": 3}


def builders(batch_size: int) -> Callable[[], BatchBuilder]:
    return lambda: BatchBuilder(batch_size, 0)


def records(builder: BatchBuilder) -> list[tuple[bytes, bytes, int]]:
    """What the broker would receive: (key, value, timestamp) of each record of the built batch."""
    return [(r.key, r.value, r.timestamp) for r in DefaultRecordBatch(bytes(builder._build()))]


def sent(chunk: Chunk, new_builder: Callable[[], BatchBuilder]) -> list[tuple[bytes, bytes]]:
    return [(key, value) for key, value, _ in records(chunk.builder(new_builder))]


def messages(n: int, topic: str = "violations", size: int = 40) -> list[tuple[str, bytes, bytes]]:
    return [(topic, f"acct-{i % 37}".encode(), f"v{i:05d}".encode().ljust(size, b".")) for i in range(n)]


def test_every_message_lands_once_on_its_keys_partition_in_publish_order() -> None:
    published = messages(500) + messages(40, "status")
    out = chunks(published, PARTITIONS.__getitem__, builders(16384), timestamp_ms=1_700_000_000_000)
    received: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    for chunk in out:
        for key, value in sent(chunk, builders(16384)):
            assert chunk.partition == partition_for(key, PARTITIONS[chunk.topic])  # what Kafka's default partitioner picks
            received.setdefault((chunk.topic, chunk.partition), []).append((key, value))
    expected: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    for topic, key, value in published:
        expected.setdefault((topic, partition_for(key, PARTITIONS[topic])), []).append((key, value))
    assert received == expected


def test_a_full_batch_continues_in_a_new_chunk_of_the_same_partition() -> None:
    published = [("violations", b"one-account", f"{i:04d}".encode() * 50) for i in range(100)]  # 200 bytes each
    out = chunks(published, PARTITIONS.__getitem__, builders(2048), timestamp_ms=1)
    assert len(out) > 5
    assert {(c.topic, c.partition) for c in out} == {("violations", partition_for(b"one-account", 8))}
    assert [m for c in out for m in sent(c, builders(2048))] == [(k, v) for _, k, v in published]
    assert all(len(c.messages) <= 10 for c in out)


def test_a_message_larger_than_a_batch_gets_a_chunk_of_its_own() -> None:
    big = ("violations", b"acct-1", b"x" * 5000)
    published = [("violations", b"acct-1", b"small-1"), big, ("violations", b"acct-1", b"small-2")]
    out = chunks(published, PARTITIONS.__getitem__, builders(1024), timestamp_ms=1)
    assert [c.messages for c in out] == [[(b"acct-1", b"small-1")], [(b"acct-1", b"x" * 5000)], [(b"acct-1", b"small-2")]]


def test_a_resend_is_the_same_batch_again() -> None:
    """After a failed delivery the chunk is sent again from a fresh builder: the same records with
    the same timestamp, so it fits the same batch size exactly."""
    out = chunks(messages(300), PARTITIONS.__getitem__, builders(4096), timestamp_ms=1_700_000_000_123)
    for chunk in out:
        first = chunk.builder(builders(4096))
        again = chunk.builder(builders(4096))
        assert first is not again
        assert records(first) == records(again)
        assert {ts for _, _, ts in records(again)} == {1_700_000_000_123}


def test_a_sent_batch_takes_no_more_messages() -> None:
    """Closed before it is handed over: the producer's own sends go to a batch of their own, and a
    resend, which knows only the chunk's messages, loses none of them."""
    chunk = chunks(messages(3), PARTITIONS.__getitem__, builders(16384), timestamp_ms=1)[0]
    batch = chunk.builder(builders(16384))
    assert batch.append(timestamp=1, key=b"k", value=b"late", headers=[]) is None
    with pytest.raises(AssertionError):
        chunk.add(b"k", b"late")


def test_the_partition_count_is_asked_once_per_topic() -> None:
    asked: list[str] = []

    def count(topic: str) -> int:
        asked.append(topic)
        return PARTITIONS[topic]

    chunks(messages(50) + messages(5, "status") + messages(50), count, builders(16384))
    assert sorted(asked) == ["status", "violations"]
