"""(a) A bare aiokafka consumer reading the records: the ceiling for Python on this broker.

Its own consumer group, from the earliest offset, `getmany` in large batches, nothing done per
record but counting its bytes. Timed from partition assignment (after the group join, which
Tansu holds for half the session timeout) to the N-th record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener


class _Assigned(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.at: float | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned and self.at is None:
            self.at = time.perf_counter()


async def _consume(bootstrap: str, topic: str, n: int, timeout_s: float) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,  # Tansu holds a JoinGroup for half of it (DESIGN §7)
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    listener = _Assigned()
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    count = nbytes = 0
    first_at = None
    deadline = time.monotonic() + timeout_s
    try:
        while count < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20000)
            for records in batches.values():
                if first_at is None and records:
                    first_at = time.perf_counter()
                for record in records:
                    nbytes += len(record.value or b"")
                count += len(records)
        done_at = time.perf_counter()
    finally:
        await consumer.stop()
    started = listener.at or first_at or done_at
    seconds = max(done_at - started, 1e-9)
    return {"records": count, "bytes": nbytes, "seconds": seconds, "rps": count / seconds if count >= n else None, "complete": count >= n}


def run(bootstrap: str, topic: str, n: int, timeout_s: float = 300.0) -> dict[str, Any]:
    return asyncio.run(_consume(bootstrap, topic, n, timeout_s))
