"""Where an account's records must be, and the checks that stop a worker when they are not.

Billing folds each account's records in log order, which Kafka keeps only inside one partition.
The partition of a record is murmur2(key bytes) % partition count, as kafka-python, aiokafka
(and so Faust) and the Java client's default partitioner compute it (CONTRACT: the partitioner
producers must use). Two things break that silently:

- partitions added to the live input topic: new records of an account go to another partition
  than its backlog, and two workers fold one account out of order (+100, then +50 on the new
  partition and +7 from the old backlog: 150, not 157);
- a producer with another partitioner (librdkafka's default `consistent_random` is CRC32).

A worker refuses both, loudly: it stops on a partition it was not configured for (at start and at
every assignment) and on a record whose key does not belong to the partition it arrived on. It
does not reject such a record instead: the account's later records would then be folded without
it, and the money it carries would wait in the rejections for a human anyway. Stopping keeps the
offsets where they are; docs/cluster-operations.md says how to grow safely (a new topic, drained).
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Protocol, Sequence

from pipeline.batch.murmur2 import murmur2

PARTITIONER = "murmur2(key bytes) & 0x7fffffff % partitions (Kafka's Java default; kafka-python; aiokafka)"
_CACHE_LIMIT = 200_000


class PartitionMismatch(Exception):
    """The log's partitions no longer match the configured layout: stop, never fold around it."""


class _Placed(Protocol):
    partition: int
    offset: int
    key: bytes | None


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def kafka_partitioner(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's DefaultPartitioner with the compiled murmur2 (the worker's producer, through
    Faust's `producer_partitioner`): the same partition for every key, about 30 times cheaper,
    and the worker publishes a violations message per account and batch (tens of thousands per
    batch on gateway traffic). A message without a key goes to a random available partition."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


class PlacementCheck:
    """Checks that every keyed message is on its key's partition. Accounts repeat, so a batch is
    reduced to its distinct (partition, key) pairs in C first, and a pair is checked once per
    worker life (batch/murmur2.py: compiled, where kafka-python's is pure Python, about 10 us a key)."""

    def __init__(self, partitions: int, set_aside: frozenset[tuple[int, int]] = frozenset()) -> None:
        if partitions < 1:
            raise ValueError(f"partition count must be at least 1, not {partitions}")
        self.partitions = partitions
        # (partition, offset) of messages an operator set aside (BILLING_SET_ASIDE): refused, not a stop
        self.set_aside = set_aside
        self._verified: set[tuple[int, bytes | None]] = set()

    def expected(self, key: bytes) -> int:
        return partition_for(key, self.partitions)

    def check(self, messages: Sequence[_Placed], topic: str = "the input topic") -> dict[tuple[int, int], int]:
        """Raise PartitionMismatch for the first message on a partition its key does not map to,
        unless an operator set it aside: those are returned, (partition, offset) -> the partition
        their key belongs to, for the processor to refuse. Messages without a key (barriers, sent
        to a partition on purpose) are not checked."""
        pairs = {(msg.partition, msg.key) for msg in messages}
        new = pairs - self._verified
        if not new:
            return {}
        aside: dict[tuple[int, int], int] = {}
        misplaced: set[tuple[int, bytes | None]] = set()  # set aside: checked again in every batch
        for partition, key in new:
            if partition >= self.partitions:
                raise PartitionMismatch(unconfigured_message(topic, [partition], self.partitions))
            if not key:
                continue
            belongs = self.expected(key)
            if belongs != partition:
                offsets = [m.offset for m in messages if m.partition == partition and m.key == key]
                kept = [offset for offset in offsets if (partition, offset) not in self.set_aside]
                if kept:
                    raise PartitionMismatch(self._misplaced(topic, partition, kept[0], key))
                aside.update({(partition, offset): belongs for offset in offsets})
                misplaced.add((partition, key))
        if len(self._verified) + len(new) > _CACHE_LIMIT:
            self._verified.clear()
        self._verified |= new - misplaced if misplaced else new
        return aside

    def _misplaced(self, topic: str, partition: int, offset: int, key: bytes) -> str:
        return (
            f"{topic} partition {partition} offset {offset}: key {key[:80]!r} belongs to partition "
            f"{self.expected(key)} of {self.partitions} ({PARTITIONER}); stopping before folding it. Either "
            "partitions were added to the topic (grow with a new topic instead: docs/cluster-operations.md), or "
            "a producer uses another partitioner (librdkafka: set partitioner=murmur2_random). Offsets stay "
            f"uncommitted. Once the cause is fixed, BILLING_SET_ASIDE={partition}:{offset} lets a worker refuse "
            "this message (kept in the rejections, to publish again with its key) instead of stopping: "
            "docs/operations.md"
        )


def unconfigured_message(topic: str, partitions: Iterable[int], configured: int) -> str:
    extra = sorted(set(partitions))
    return (
        f"{topic}: partition(s) {extra} exist but this worker is configured for {configured} partitions "
        f"(BILLING_PARTITIONS={configured}); partitions were added to a live topic, which moves accounts between "
        "partitions and folds them out of order. Stopping. Grow with a new topic and a drained switch-over "
        "(docs/cluster-operations.md)."
    )


def check_assignment(topic: str, assigned: Iterable[int], configured: int, topic_count: int | None = None) -> None:
    """On every assignment: a rebalance after partitions were added may hand the new ones out (a
    plain Kafka assignor) or leave them unassigned, their records never billed (Faust's assignor
    keeps to the partitions it started with, and the group rebalances again and again, measured on
    Tansu): `topic_count` is the partition count the consumer's metadata now gives the topic."""
    extra = [p for p in assigned if p >= configured]
    if extra:
        raise PartitionMismatch(unconfigured_message(topic, extra, configured))
    if topic_count is not None and topic_count != configured:
        raise PartitionMismatch(
            unconfigured_message(topic, range(configured, topic_count), configured)
            if topic_count > configured
            else f"{topic} has {topic_count} partitions but this worker is configured for {configured}: "
            "the topic was replaced. Stopping (docs/cluster-operations.md)."
        )


def confirm_drained(reader: object, bootstrap: str, settings: object, topic: str, timeout: float, wait_for: Callable[..., bool]) -> bool:
    """True once the workers consuming `topic` have written everything published to it before
    this call: a barrier on each of its partitions, written only after every record before it
    (`billing wait`'s mechanism; Tansu's end offsets cannot be trusted, DESIGN §7). Publishers
    must already write to the new topic (and the old one be closed to writes, e.g. by ACL), or a
    record published after the barrier would be left behind."""
    return wait_for(reader, bootstrap, settings.with_(input_topic_name=topic), timeout)  # type: ignore[attr-defined]
