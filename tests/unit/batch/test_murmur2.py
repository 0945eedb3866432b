"""batch/murmur2 is Kafka's partitioner hash: the same value as kafka-python's for any key."""

from __future__ import annotations

import random

from kafka.partitioner.default import murmur2 as reference

from pipeline.batch.murmur2 import murmur2


def test_it_equals_kafka_pythons_murmur2_on_keys_of_every_length_and_byte() -> None:
    rng = random.Random(18)
    keys = [b"", b"\x00", b"\xff\xff\xff", "账户-42".encode()] + [rng.randbytes(n) for n in range(0, 70) for _ in range(30)]
    assert [murmur2(key) for key in keys] == [reference(key) for key in keys]


def test_known_partitions_of_the_java_client() -> None:
    # Kafka's own DefaultPartitionerTest / Utils.murmur2 vectors, as positive 32-bit values
    assert (murmur2(b"21") & 0x7FFFFFFF) == (-973932308 & 0x7FFFFFFF)
    assert (murmur2(b"foobar") & 0x7FFFFFFF) == (-790332482 & 0x7FFFFFFF)
    assert (murmur2(b"a-little-bit-long-string") & 0x7FFFFFFF) == (-985981536 & 0x7FFFFFFF)
    assert (murmur2(b"a-little-bit-longer-string") & 0x7FFFFFFF) == (-1486304829 & 0x7FFFFFFF)
    assert (murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") & 0x7FFFFFFF) == (-58897971 & 0x7FFFFFFF)


def test_the_workers_partitioner_picks_aiokafkas_partition_for_every_key() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from pipeline.stream.partitioning import kafka_partitioner

    rng = random.Random(21)
    for count in (1, 3, 4, 12):
        partitions = list(range(count))
        for key in [rng.randbytes(rng.randrange(1, 40)) for _ in range(300)]:
            assert kafka_partitioner(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions)
    assert kafka_partitioner(None, [0, 1, 2], [2]) == 2  # no key: an available partition
