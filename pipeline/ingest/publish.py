"""`billing publish`: JSON lines -> the input topic, keyed by account, in file order per account.

Every line that holds something is published; nothing read is dropped. A line that is not a JSON
text (broken JSON, bytes that are not UTF-8) or is longer than a record may be
(records.MAX_RECORD_BYTES) travels alone, with Kafka headers naming where it came from
(`billing-line`, `billing-source`, and `billing-size` when it was cut): the worker keeps it as a
rejected record whose detail names the line, so `billing rejected` lists it. An oversize line is
cut to one byte over the record limit for transport (the worker rejects it as oversize whatever
the broker's message size), and the size as read travels in its header. Everything that parses
is sent as it is, even if it breaks the schema, so that the pipeline keeps it as a rejection.

Every record Kafka did not acknowledge is counted, with the first line it came from: the command
then says how many were not sent and from which line to publish again (duplicates are safe).
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
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TextIO

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from pipeline.batch.framing import encode_group
from pipeline.cli.progress import Progress, write_or_drop
from pipeline.core.records import MAX_RECORD_BYTES

MAX_RECORDS_PER_MESSAGE = 200
MAX_MESSAGE_BYTES = 512 * 1024
MAX_BUFFERED_RECORDS = 50_000
MAX_BUFFER_AGE_S = 0.2  # a slow stream (stdin) is not held back longer than this
DEFAULT_TIMEOUT_S = 120.0  # Kafka's own default delivery timeout
LINE_HEADER, SOURCE_HEADER, SIZE_HEADER = "billing-line", "billing-source", "billing-size"
Headers = list[tuple[str, bytes]]


@dataclass
class PublishReport:
    sent: Counter[str] = field(default_factory=Counter)  # records read and handed to Kafka, by type
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line, what is wrong): each published alone as a rejected record
    failures: list[str] = field(default_factory=list)  # one error per message Kafka did not take
    unsent: int = 0  # records Kafka did not acknowledge
    resume_line: int | None = None  # the first line of a record Kafka did not acknowledge
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> last offset the broker acknowledged

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def failed(self, records: int, first_line: int, error: str) -> None:
        self.failures.append(error)
        self.unsent += records
        if self.resume_line is None or first_line < self.resume_line:
            self.resume_line = first_line


def make_producer(bootstrap: str, timeout_s: float = DEFAULT_TIMEOUT_S, **overrides: Any) -> KafkaProducer:
    """The publisher's producer; `timeout_s` bounds how long a record (or the topic's metadata)
    may wait for the broker before it counts as not sent. `overrides`: TLS/SASL
    (kafka_security.kafka_python_kwargs) and tests' producer settings."""
    timeout_ms = max(int(timeout_s * 1000), 1000)
    config: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        client_id="billing-publish",
        acks="all",
        retries=10,
        max_in_flight_requests_per_connection=1,  # no reordering on retries
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        delivery_timeout_ms=timeout_ms,
        request_timeout_ms=min(30_000, timeout_ms - 20),
        max_block_ms=timeout_ms,
    )
    config.update(overrides)
    return KafkaProducer(**config)


def key_and_kind(body: object) -> tuple[bytes, str]:
    if not isinstance(body, dict):
        return b"", "invalid"
    account = body.get("account_id")
    kind = body.get("type", "usage")
    return (account.encode("utf-8") if isinstance(account, str) else b""), (kind if isinstance(kind, str) else "invalid")


Send = Callable[[bytes, bytes, int, int, Headers], None]  # key, value, first line, records, headers


class Batcher:
    """Groups each account's consecutive records into messages, in order. `send` is told the line
    of the group's first record and how many records it holds (what a failure loses)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.groups: dict[bytes, list[bytes]] = {}
        self.sizes: dict[bytes, int] = {}
        self.first_lines: dict[bytes, int] = {}
        self.buffered = 0
        self.oldest = time.monotonic()

    def add(self, key: bytes, record: bytes, line: int = 0) -> None:
        if not self.groups:
            self.oldest = time.monotonic()
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = []
            self.sizes[key] = 0
            self.first_lines[key] = line
        group.append(record)
        self.sizes[key] += len(record) + 2
        self.buffered += 1
        if len(group) >= MAX_RECORDS_PER_MESSAGE or self.sizes[key] >= MAX_MESSAGE_BYTES:
            self.flush_key(key)
        elif self.buffered >= MAX_BUFFERED_RECORDS or time.monotonic() - self.oldest > MAX_BUFFER_AGE_S:
            self.flush()

    def add_alone(self, key: bytes, record: bytes, line: int, headers: Headers) -> None:
        """A record that travels in a message of its own (with headers), after the account's
        records read before it."""
        if key in self.groups:
            self.flush_key(key)
        self.send(key, record, line, 1, headers)

    def flush_key(self, key: bytes) -> None:
        group = self.groups.pop(key)
        self.sizes.pop(key)
        self.buffered -= len(group)
        self.send(key, encode_group(group), self.first_lines.pop(key), len(group), [])

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


def origin_headers(number: int, source: str, size: int | None = None) -> Headers:
    headers = [(LINE_HEADER, str(number).encode()), (SOURCE_HEADER, source.encode("utf-8", errors="replace"))]
    if size is not None:
        headers.append((SIZE_HEADER, str(size).encode()))
    return headers


def publish_lines(
    lines: Iterable[bytes | None],
    bootstrap: str,
    topic: str,
    total: int | None = None,
    quiet: bool = False,
    source: str = "-",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    producer_config: dict[str, Any] | None = None,
    progress: Progress | None = None,
    client_kwargs: dict[str, Any] | None = None,
) -> PublishReport:
    """Publish every line; never raises for a record Kafka does not take (the report counts it).
    Printing progress cannot stop it (Progress swallows a closed stream)."""
    report = PublishReport()
    producer = make_producer(bootstrap, timeout_s, **{**(client_kwargs or {}), **(producer_config or {})})
    progress = progress or Progress("published", total)
    lock = threading.Lock()  # callbacks run on the producer's thread
    gave_up: list[str] = []  # the broker did not answer in time: the rest is counted, not tried
    stopped = threading.Event()  # a send failed: nothing after it may overtake it

    def acked(meta: Any) -> None:
        partition, offset = meta.partition, meta.offset
        with lock:
            if offset > report.offsets.get(partition, -1):
                report.offsets[partition] = offset

    def send(key: bytes, value: bytes, first_line: int, records: int, headers: Headers) -> None:
        def failed(exc: BaseException) -> None:
            stopped.set()
            with lock:
                report.failed(records, first_line, f"{type(exc).__name__}: {exc}")

        if gave_up or stopped.is_set():
            failed(KafkaTimeoutError(gave_up[0]))
            return
        try:
            future = producer.send(topic, key=key, value=value, headers=headers or None)
        except KafkaTimeoutError as exc:  # no metadata or no buffer within the timeout: the broker is gone
            gave_up.append(str(exc))
            failed(exc)
            return
        except Exception as exc:  # e.g. larger than the producer's max request size
            failed(exc)
            return
        future.add_callback(acked).add_errback(failed)

    batcher = Batcher(send)
    closed = False
    try:
        number = 0
        for line in lines:
            if stopped.is_set():  # publish again from report.resume_line
                break
            if line is None:  # the input paused (a live stream): send what waits now
                batcher.flush()
                continue
            number += 1
            line = line.strip()
            if not line:
                continue
            body: Any = None
            reason = ""
            try:
                body = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                reason = f"not JSON ({exc})"
            if len(line) > MAX_RECORD_BYTES:
                reason = f"{len(line)} bytes, over the {MAX_RECORD_BYTES}-byte record limit"
            key, kind = key_and_kind(body)
            if not reason:
                batcher.add(key, line, number)
                report.sent[kind] += 1
            else:  # alone, with where it came from; cut to one byte over the limit if longer
                report.bad_lines.append((number, reason))
                size = len(line) if len(line) > MAX_RECORD_BYTES else None
                batcher.add_alone(key, line[: MAX_RECORD_BYTES + 1], number, origin_headers(number, source, size))
                report.sent["invalid"] += 1
            if not quiet:
                progress.update(report.total)
        batcher.flush()
        _flush_until_failure(producer, stopped)
        if stopped.is_set():
            _abort(producer)  # what is still queued behind the failure is not sent (its errbacks count it)
            closed = True
    finally:
        if not closed:
            producer.close()
    if not quiet:
        progress.done()
    return report


def tell(report: PublishReport, out: TextIO | None, err: TextIO | None) -> int:
    """What `billing publish` prints, and its exit status: 1 when any record read was not sent
    (with the line to publish again from), else 0. Lines that could not be read as records were
    published as rejected records, so they do not fail the command; they are named. Printing
    cannot fail it: a reader that left (EPIPE) or a closed stream only loses the text."""
    read = report.total
    done = f"{read} records" if not report.unsent else f"{read - report.unsent} of {read} records"
    write_or_drop(out, f"published {done}" + "".join(f"\n  {kind}: {n}" for kind, n in sorted(report.sent.items())) + "\n")
    for number, reason in report.bad_lines[:20]:
        write_or_drop(err, f"billing: line {number}: {reason}; published as a rejected record\n")
    if len(report.bad_lines) > 20:
        write_or_drop(err, f"billing: ... and {len(report.bad_lines) - 20} more such lines\n")
    if report.bad_lines:
        write_or_drop(
            err,
            f"billing: {len(report.bad_lines)} lines are not records; `billing rejected` lists them "
            "(invalid_schema, the detail names the line)\n",
        )
    if report.unsent:
        write_or_drop(
            err,
            f"billing: {report.unsent} of {read} records were NOT sent: Kafka did not acknowledge them "
            f"({report.failures[0]}); publish again from line {report.resume_line} "
            "(records already sent are recognised as duplicates)\n",
        )
        return 1
    return 0


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
