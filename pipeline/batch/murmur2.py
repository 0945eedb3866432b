"""Kafka's default partitioner hash, murmur2, compiled with native 64-bit integers.

kafka-python's `murmur2` is pure Python, about 10 us a key: on gateway traffic (one record per
message, 100,000 accounts, each key checked once per worker life by partitioning.PlacementCheck)
it took a tenth of the processor's thread (py-spy on the worker). The same arithmetic on `i64`
compiles to plain C integer operations. Every product is of two values below 2**32 and 2**31, so
it fits in 63 bits. tests/unit/batch/test_murmur2.py checks it against kafka-python's on random
keys of every length remainder.
"""

from __future__ import annotations

from mypy_extensions import i64

MASK32: i64 = 0xFFFFFFFF
M: i64 = 0x5BD1E995
SEED: i64 = 0x9747B28C


def murmur2(data: bytes) -> int:
    """MurmurHash2 of `data` as Kafka's Java client computes it (org.apache.kafka.common.utils.Utils.murmur2), unsigned 32 bits."""
    length: i64 = len(data)
    h: i64 = (SEED ^ length) & MASK32
    end: i64 = length - length % 4
    i: i64 = 0
    while i < end:
        k: i64 = i64(data[i]) | (i64(data[i + 1]) << 8) | (i64(data[i + 2]) << 16) | (i64(data[i + 3]) << 24)
        k = (k * M) & MASK32
        k ^= k >> 24
        k = (k * M) & MASK32
        h = ((h * M) & MASK32) ^ k
        i += 4
    extra: i64 = length % 4
    if extra >= 3:
        h ^= i64(data[end + 2]) << 16
    if extra >= 2:
        h ^= i64(data[end + 1]) << 8
    if extra >= 1:
        h ^= i64(data[end])
        h = (h * M) & MASK32
    h ^= h >> 13
    h = (h * M) & MASK32
    h ^= h >> 15
    return int(h)
