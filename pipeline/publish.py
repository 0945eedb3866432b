"""`billing publish`: JSON lines -> the input topic, keyed by account, in file order per account.

Lines that are not JSON are not sent (they are named with their line numbers); everything that
parses is sent, even if it breaks the schema, so that the pipeline keeps it as a rejection.
Order per account survives retries because at most one request is in flight per connection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import orjson
from kafka import KafkaProducer

from pipeline.progress import Progress


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


def publish_lines(lines: Iterable[bytes], bootstrap: str, topic: str, total: int | None = None, quiet: bool = False) -> PublishReport:
    report = PublishReport()
    producer = make_producer(bootstrap)
    progress = Progress("published", total)

    def acked(meta: object) -> None:
        partition, offset = meta.partition, meta.offset  # type: ignore[attr-defined]
        if offset > report.offsets.get(partition, -1):
            report.offsets[partition] = offset

    def failed(exc: BaseException) -> None:
        report.failures.append(str(exc))

    try:
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                body = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                report.bad_lines.append((number, str(exc)))
                continue
            key, kind = key_and_kind(body)
            producer.send(topic, key=key, value=line).add_callback(acked).add_errback(failed)
            report.sent[kind] += 1
            if not quiet:
                progress.update(report.total)
        producer.flush()
    finally:
        producer.close()
    if not quiet:
        progress.done()
    return report
