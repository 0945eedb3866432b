"""A batch's outputs as Kafka record batches: one send and one delivery future per batch of a
topic partition, not per message.

On gateway traffic a batch publishes a violations message for about every fourth record (tens of
thousands per batch: the default limits are small). Sent one by one through the producer, each
message cost its own `send` coroutine, partitioning call and delivery future on the event loop,
which holds Python's lock meanwhile: py-spy (`--gil`) on the worker during gw_100k found the loop
holding it 21% of the time, two fifths of that publishing, all of it taken from the folding
thread. Here each message is one append to aiokafka's record-batch builder, in C.

What does not change: every message goes to the partition Kafka's default partitioner picks for
its key (`partitioning.partition_for`, as the producer's own partitioner), the messages of one
partition keep their order (the producer sends a partition's batches one after another), and a
chunk is delivered only once the broker acknowledged it (`delivery.deliver` resends from the
first chunk not acknowledged, rebuilt from its messages).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from pipeline.stream.partitioning import partition_for


class Builder(Protocol):
    """aiokafka's BatchBuilder, as `AIOKafkaProducer.create_batch()` makes it."""

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None, headers: Sequence[Any] = ...) -> Any: ...

    def close(self) -> None: ...


class Chunk:
    """Messages of one topic partition that fit one record batch, in their order. The builder
    filled while chunking is sent first; a resend fills a new one with the same messages and the
    same timestamp, so it is exactly as large and fits again."""

    __slots__ = ("topic", "partition", "messages", "timestamp_ms", "_filled")

    def __init__(self, topic: str, partition: int, timestamp_ms: int, builder: Builder) -> None:
        self.topic = topic
        self.partition = partition
        self.timestamp_ms = timestamp_ms
        self.messages: list[tuple[bytes, bytes]] = []
        self._filled: Builder | None = builder

    def add(self, key: bytes, value: bytes) -> bool:
        """Append to this chunk's batch; False when it is full (the first message always fits)."""
        assert self._filled is not None, "a chunk takes messages only while it is being built"
        if self._filled.append(timestamp=self.timestamp_ms, key=key, value=value, headers=[]) is None:
            return False
        self.messages.append((key, value))
        return True

    def builder(self, new_builder: Callable[[], Builder]) -> Builder:
        """The batch to send, closed (the producer's own sends must not add to it: a resend
        would not know them): the one filled while chunking, then a fresh one per resend."""
        batch, self._filled = self._filled, None
        if batch is None:
            batch = new_builder()
            for key, value in self.messages:
                if batch.append(timestamp=self.timestamp_ms, key=key, value=value, headers=[]) is None:
                    raise RuntimeError(f"{self!r}: its messages no longer fit one record batch")
        batch.close()
        return batch

    def __repr__(self) -> str:
        return f"{len(self.messages)} message(s) to {self.topic}[{self.partition}]"


def chunks(
    messages: Iterable[tuple[str, bytes, bytes]],
    partitions: Callable[[str], int],
    new_builder: Callable[[], Builder],
    timestamp_ms: int | None = None,
) -> list[Chunk]:
    """(topic, key, value) messages as chunks in order of their first message; `partitions(topic)`
    is the topic's partition count. A message too large for a batch gets a chunk of its own (the
    broker then accepts or refuses it, as it would a single send)."""
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    out: list[Chunk] = []
    open_chunks: dict[tuple[str, int], Chunk] = {}
    counts: dict[str, int] = {}
    for topic, key, value in messages:
        count = counts.get(topic)
        if count is None:
            count = counts[topic] = partitions(topic)
        partition = partition_for(key, count)
        chunk = open_chunks.get((topic, partition))
        if chunk is None or not chunk.add(key, value):
            chunk = open_chunks[(topic, partition)] = Chunk(topic, partition, stamp, new_builder())
            out.append(chunk)
            if not chunk.add(key, value):
                raise RuntimeError(f"a record batch refused its first message ({len(value)} bytes to {topic})")
    return out
