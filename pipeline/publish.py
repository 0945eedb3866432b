"""`billing publish`: JSON lines -> the input topic, keyed by account, in file order per account.

Lines that are not JSON are not sent (they are named with their line numbers); everything that
parses is sent, even if it breaks the schema, so that the pipeline keeps it as a rejection.
Order per account survives retries because at most one request is in flight per connection.
A send that still fails (the broker away for longer than the delivery timeout) stops the publish:
nothing later is handed to the producer, what is queued is aborted, and the report names the
first line not acknowledged. Publishing again from that line keeps every account's order (the
lines after it that did land are sent again and skipped as duplicates); going on past it would
put an account's later records before the lost one.

Consecutive records of one account travel together in one message, as an RFC 7464 JSON text
sequence (RS before each record, LF after): the worker then pays Kafka's and Faust's per-message
cost once per group instead of once per record. Each record keeps its bytes as received.
"""

from __future__ import annotations

import select
import threading
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
    resume_line: int | None = None  # after a failure: the first line not known to be acknowledged (1-based)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def make_producer(bootstrap: str, **client_kwargs: object) -> KafkaProducer:
    """`client_kwargs`: TLS/SASL (kafka_security.kafka_python_kwargs)."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="billing-publish",
        acks="all",
        retries=2_147_483_647,  # retried until the delivery timeout: a broker away for 2 minutes is waited for
        delivery_timeout_ms=120_000,
        request_timeout_ms=30_000,
        max_in_flight_requests_per_connection=1,  # no reordering on retries
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        **client_kwargs,  # type: ignore[arg-type]
    )


def key_and_kind(body: object) -> tuple[bytes, str]:
    if not isinstance(body, dict):
        return b"", "invalid"
    account = body.get("account_id")
    kind = body.get("type", "usage")
    return (account.encode("utf-8") if isinstance(account, str) else b""), (kind if isinstance(kind, str) else "invalid")


class Batcher:
    """Groups each account's consecutive records into messages, in order."""

    def __init__(self, send: Callable[[bytes, bytes, int], None]) -> None:
        self.send = send
        self.groups: dict[bytes, list[bytes]] = {}
        self.first_lines: dict[bytes, int] = {}  # key -> line number of the group's first record
        self.sizes: dict[bytes, int] = {}
        self.buffered = 0
        self.oldest = time.monotonic()

    def add(self, key: bytes, record: bytes, line: int = 0) -> None:
        if not self.groups:
            self.oldest = time.monotonic()
        group = self.groups.setdefault(key, [])
        if not group:
            self.first_lines[key] = line
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
        self.send(key, encode_group(group), self.first_lines.pop(key, 0))

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


def publish_lines(lines: Iterable[bytes | None], bootstrap: str, topic: str, total: int | None = None, quiet: bool = False,
                  client_kwargs: dict[str, object] | None = None) -> PublishReport:
    report = PublishReport()
    producer = make_producer(bootstrap, **(client_kwargs or {}))
    progress = Progress("published", total)
    lock = threading.Lock()
    stopped = threading.Event()

    def acked(meta: object) -> None:
        partition, offset = meta.partition, meta.offset  # type: ignore[attr-defined]
        if offset > report.offsets.get(partition, -1):
            report.offsets[partition] = offset

    def not_sent(first_line: int) -> None:
        with lock:
            if report.resume_line is None or first_line < report.resume_line:
                report.resume_line = first_line

    def failed(first_line: int, exc: BaseException) -> None:  # on the producer's thread
        stopped.set()
        with lock:
            report.failures.append(str(exc))
        not_sent(first_line)

    def send(key: bytes, value: bytes, first_line: int) -> None:
        if stopped.is_set():  # nothing after a failure: it would overtake the lost records
            not_sent(first_line)
            return
        producer.send(topic, key=key, value=value).add_callback(acked).add_errback(failed, first_line)

    batcher = Batcher(send)
    closed = False
    try:
        number = 0
        for line in lines:
            if stopped.is_set():
                break
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
            batcher.add(key, line, number)
            report.sent[kind] += 1
            if not quiet:
                progress.update(report.total)
        batcher.flush()
        _flush_until_failure(producer, stopped)
        if stopped.is_set():
            _abort(producer)  # what is still queued behind the failure is not sent (its errbacks name its lines)
            closed = True
    finally:
        if not closed:
            producer.close()
    if not quiet:
        progress.done()
    return report


def _abort(producer: KafkaProducer) -> None:
    """Close without sending what is queued. kafka-python's close(timeout=0) first flushes, which
    raises while anything is queued; its sender's force_close aborts the queued batches (failing
    their futures), after which close completes."""
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=0)
        return
    except KafkaTimeoutError:
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    try:
        producer.close(timeout=0)
    except KafkaTimeoutError:  # nothing more can be done: the report still names the first line not acknowledged
        pass


def _flush_until_failure(producer: KafkaProducer, stopped: threading.Event) -> None:
    """Wait for every queued send, but return at the first failure (so the rest can be aborted)."""
    from kafka.errors import KafkaTimeoutError

    while not stopped.is_set():
        try:
            producer.flush(timeout=0.5)
            return
        except KafkaTimeoutError:
            continue
