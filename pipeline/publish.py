"""`billing publish`: JSON lines -> the input topic, keyed by account, in file order per account.

Lines that are not JSON are not sent (they are named with their line numbers); everything that
parses is sent, even if it breaks the schema, so that the pipeline keeps it as a rejection.
Order per account survives retries because at most one request is in flight per connection.

Consecutive records of one account travel together in one message, as an RFC 7464 JSON text
sequence (RS before each record, LF after): the worker then pays Kafka's and Faust's per-message
cost once per group instead of once per record. Each record keeps its bytes as received.
"""

from __future__ import annotations

import select
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

import orjson
from kafka import KafkaProducer

from pipeline.framing import encode_group
from pipeline.progress import Progress

MAX_RECORDS_PER_MESSAGE = 200
MAX_MESSAGE_BYTES = 512 * 1024
MAX_BUFFERED_RECORDS = 50_000
MAX_BUFFER_AGE_S = 0.2  # a slow stream (stdin) is not held back longer than this


@dataclass
class PublishReport:
    sent: Counter[str] = field(default_factory=Counter)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> last offset the broker acknowledged

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def make_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="billing-publish",
        acks="all",
        retries=10,
        max_in_flight_requests_per_connection=1,  # no reordering on retries
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def key_and_kind(body: object) -> tuple[bytes, str]:
    if not isinstance(body, dict):
        return b"", "invalid"
    account = body.get("account_id")
    kind = body.get("type", "usage")
    return (account.encode("utf-8") if isinstance(account, str) else b""), (kind if isinstance(kind, str) else "invalid")


class Batcher:
    """Groups each account's consecutive records into messages, in order."""

    def __init__(self, send: Callable[[bytes, bytes], None]) -> None:
        self.send = send
        self.groups: dict[bytes, list[bytes]] = {}
        self.sizes: dict[bytes, int] = {}
        self.buffered = 0
        self.oldest = time.monotonic()

    def add(self, key: bytes, record: bytes) -> None:
        if not self.groups:
            self.oldest = time.monotonic()
        group = self.groups.setdefault(key, [])
        group.append(record)
        self.sizes[key] = self.sizes.get(key, 0) + len(record) + 2
        self.buffered += 1
        if len(group) >= MAX_RECORDS_PER_MESSAGE or self.sizes[key] >= MAX_MESSAGE_BYTES:
            self.flush_key(key)
        elif self.buffered >= MAX_BUFFERED_RECORDS or time.monotonic() - self.oldest > MAX_BUFFER_AGE_S:
            self.flush()

    def flush_key(self, key: bytes) -> None:
        group = self.groups.pop(key)
        self.sizes.pop(key)
        self.buffered -= len(group)
        self.send(key, encode_group(group))

    def flush(self) -> None:
        for key in list(self.groups):
            self.flush_key(key)


def live_lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """Lines of a live stream (stdin), with None whenever nothing more is waiting, so that a slow
    producer's records are not held back until the next line arrives."""
    while True:
        if not select.select([stream], [], [], 0)[0]:
            yield None
        line = stream.readline()
        if not line:
            return
        yield line


def publish_lines(lines: Iterable[bytes | None], bootstrap: str, topic: str, total: int | None = None, quiet: bool = False) -> PublishReport:
    report = PublishReport()
    producer = make_producer(bootstrap)
    progress = Progress("published", total)

    def acked(meta: object) -> None:
        partition, offset = meta.partition, meta.offset  # type: ignore[attr-defined]
        if offset > report.offsets.get(partition, -1):
            report.offsets[partition] = offset

    def failed(exc: BaseException) -> None:
        report.failures.append(str(exc))

    def send(key: bytes, value: bytes) -> None:
        producer.send(topic, key=key, value=value).add_callback(acked).add_errback(failed)

    batcher = Batcher(send)
    try:
        number = 0
        for line in lines:
            if line is None:  # the input paused (a live stream): send what waits now
                batcher.flush()
                continue
            number += 1
            line = line.strip()
            if not line:
                continue
            try:
                body = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                report.bad_lines.append((number, str(exc)))
                continue
            key, kind = key_and_kind(body)
            batcher.add(key, line)
            report.sent[kind] += 1
            if not quiet:
                progress.update(report.total)
        batcher.flush()
        producer.flush()
    finally:
        producer.close()
    if not quiet:
        progress.done()
    return report
