"""Hostile bytes straight into the input topic, as a misbehaving producer would send them: the
running pipeline keeps going, and every record is billed, applied, a duplicate or rejected."""

from __future__ import annotations

import json
import urllib.request

import pytest
from kafka import KafkaProducer

from pipeline.batch.framing import split_message
from pipeline.runtime import read_runtime
from tests.hostile import hostile_corpus
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def worker_health(stack: Stack) -> dict:
    runtime = read_runtime(stack.data_dir)
    assert runtime is not None
    with urllib.request.urlopen(runtime.api + "/healthz", timeout=10) as response:
        return json.loads(response.read())


def test_hostile_records_never_stop_the_pipeline(stack: Stack) -> None:
    corpus = hostile_corpus(10000, seed=9001)  # a seed no other test on the shared stack uses: its own accounts
    before = worker_health(stack)["stats"]
    counted_before = sum(before.get(k, 0) for k in ("billed", "applied", "duplicate", "rejected"))
    producer = KafkaProducer(bootstrap_servers=stack.kafka(), max_request_size=8 * 1024 * 1024)
    for n, raw in enumerate(corpus):
        producer.send("billing.input", key=f"hostile-{n % 17}".encode(), value=raw)
    producer.flush()
    producer.close()
    stack.wait()

    after = worker_health(stack)["stats"]
    counted = sum(after.get(k, 0) for k in ("billed", "applied", "duplicate", "rejected")) - counted_before
    # one outcome per record, nothing dropped or counted twice (garbage that happens to start with the
    # RS byte is, by the framing, a sequence: each of its parts is a record of its own)
    assert counted == sum(len(split_message(raw)) for raw in corpus)
    assert stack.proc is not None and stack.proc.poll() is None  # still running
    rejected = stack.rejected("--reason", "invalid_schema")
    assert rejected and all(r["detail"] for r in rejected)
