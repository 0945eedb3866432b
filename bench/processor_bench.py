"""The worker's batch processor alone, in this process (processor_rps): the same records, framed
into messages as `billing publish` frames them, through `BatchProcessor.process` in batches of
`BILLING_BATCH_SIZE` messages on a fresh embedded engine, with no broker, consumer or event loop.

It is (d) without Kafka and Faust: the worker's own work (parse, fold, encode, the writes behind
it, the working-set loads). On a machine whose speed moves from minute to minute it is the
steadier figure for comparing changes to that work; (d) is still the one the targets name.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.fold_bench import keyed
from pipeline.batch.processor import BatchProcessor, Message
from pipeline.core.catalog import load_catalog
from pipeline.ingest.publish import Batcher
from pipeline.settings import load_settings
from pipeline.store.chclient import connect, migrate


def frame(lines: list[bytes]) -> list[Message]:
    """Messages of one partition, each account's consecutive records grouped as `billing publish`
    groups them (outside the timed part)."""
    messages: list[Message] = []
    batcher = Batcher(lambda key, value, *_: messages.append(Message(0, len(messages), key, value)))
    for value, key in keyed(lines):
        batcher.add(key.encode("utf-8"), value)
    batcher.flush()
    return messages


def run(lines: list[bytes], workdir: Path) -> dict[str, Any]:
    settings = load_settings()
    client = connect(f"chdb://{workdir / 'processor-clickhouse'}")
    migrate(client)
    processor = BatchProcessor(client, load_catalog(), "bench-processor", auto_tick=False, write_records=settings.write_records)
    messages = frame(lines)
    size = settings.batch_size
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    for i in range(0, len(messages), size):
        for status, count in processor.process(messages[i : i + size]).statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    seconds = max(time.perf_counter() - started, 1e-9)
    if sum(statuses.values()) != len(lines):
        raise RuntimeError(f"the processor accounted for {sum(statuses.values())} of {len(lines)} records")
    return {
        "records": len(lines),
        "messages": len(messages),
        "batch_messages": size,
        "write_records": settings.write_records,
        "seconds": seconds,
        "rps": len(lines) / seconds,
        "outcomes": statuses,
    }
