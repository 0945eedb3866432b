"""The batch edge on the real engine, without a broker: offset gaps, pruned hours, restarts."""

from __future__ import annotations

import json
import uuid
import zlib
from pathlib import Path

import pytest

from pipeline import queries
from pipeline.catalog import load_catalog
from pipeline.chclient import connect, migrate
from pipeline.processor import BatchProcessor, Message, OffsetGap
from pipeline.settings import Settings
from pipeline.workload import generate
from tests.integration.stack import bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.oracle import expected

pytestmark = pytest.mark.integration


def messages(lines: list[str], partitions: int = 2) -> list[Message]:
    offsets = [0] * partitions
    out = []
    for line in lines:
        account = json.loads(line).get("account_id", "")
        partition = zlib.crc32(str(account).encode()) % partitions  # stable across runs, unlike hash()
        out.append(Message(partition, offsets[partition], str(account).encode(), line.encode()))
        offsets[partition] += 1
    return out


@pytest.fixture
def client(inprocess_dir: Path):
    client = connect(Settings(data_dir=inprocess_dir).clickhouse_url)
    migrate(client)
    return client


def test_an_offset_gap_stops_the_processor(client) -> None:
    epoch = uuid.uuid4().hex
    msgs = [m for m in messages(generate(300, seed=3), partitions=1)]
    BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(msgs[:50])
    restarted = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    with pytest.raises(OffsetGap, match="offsets from 50 were never applied"):
        restarted.process(msgs[60:80])
    restarted.process(msgs[40:80])  # resuming at (or before) the applied position is fine


def test_restarts_and_redeliveries_in_any_batch_shape_bill_exactly(client) -> None:
    """Random batch sizes, a process restart (all memory lost) every few batches, and redelivered
    overlaps: the bills equal the oracle, late hours reloaded from ClickHouse included."""
    import random

    lines = generate(4000, seed=31)
    msgs = messages(lines)
    epoch = uuid.uuid4().hex
    rng = random.Random(1)
    processor = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    position = 0
    while position < len(msgs):
        size = rng.randint(1, 700)
        start = max(0, position - rng.randint(0, 50))  # redeliver a little of what went before
        processor.process(msgs[start:position + size])
        position += size
        if rng.random() < 0.3:
            processor = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)  # a restart
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills


def test_outputs_lost_before_publishing_are_published_when_redelivered(client) -> None:
    """A worker writes a batch to ClickHouse and dies before publishing its status changes and
    violations to Kafka (the offset is committed after both). The batch is delivered again to a
    new worker: its records are skipped, not re-applied, and what the first worker never
    published is published now, so the status topic ends as if nothing had happened."""
    from pipeline.workload import generate_settlement

    lines = generate_settlement(3000, seed=8)
    msgs = messages(lines, partitions=1)
    epoch = uuid.uuid4().hex
    first_half, second_half = msgs[:1500], msgs[1500:]
    published: dict[str, object] = {}
    violations: set[tuple[str, str, str]] = set()

    def publish(result) -> None:
        published.update((change.account_id, change) for change in result.status_changes)
        violations.update((v.account_id, v.event_id, v.limit) for v in result.violations)

    worker = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    publish(worker.process(first_half))
    lost = worker.process(second_half)  # written; the worker dies before publishing
    assert lost.status_changes and lost.violations, "the lost batch must have outputs to lose"
    unpublished_latest = {c.account_id: c for c in lost.status_changes}
    assert any(published.get(acc) != change for acc, change in unpublished_latest.items())

    again = BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(second_half)
    assert again.skipped == len(second_half) and sum(again.statuses.values()) == 0  # nothing applied twice
    publish(again)
    for account, change in unpublished_latest.items():
        assert published[account] == change  # the gateway's view: every account's latest status
    assert {(v.account_id, v.event_id, v.limit) for v in lost.violations} <= violations
