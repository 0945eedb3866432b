"""The worker's Prometheus metrics, built with prometheus_client (the standard client library).

One `WorkerMetrics` per worker, each with its own `CollectorRegistry` (not the process-global
one): tests and embeddings can run several workers in one process without "Duplicated
timeseries" errors, and /metrics shows exactly this worker. The exposition (HELP/TYPE lines,
label escaping, histogram buckets, `_total` suffixes) is the library's, so it parses with
Prometheus's own parser.

Counting rules: every input record is counted once by the outcome the fold gave it. Records a
redelivery brings again after they were applied are skipped before the fold and counted only in
`billing_redeliveries_skipped_total`. A rejected record is not claimed by the fold (the rule book
keeps the first and rejects it again when it is sent again, and ClickHouse keeps one row): the
metrics remember the recently rejected record ids and do not count the same rejection twice.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

STATUSES = ("billed", "applied", "duplicate", "rejected")
# A batch takes from a few ms (a handful of records) to tens of seconds (200,000 records on a busy
# machine, or ClickHouse slow): buckets spread over that range so that p50/p99 stay meaningful.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# Publish to queryable: sub-second when idle, minutes when a backlog is drained.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
REMEMBERED_REJECTIONS = 100_000  # (account, record id) pairs: some 30 MB at most; a re-published file or a replay

# (partition, last processed offset, committed offset or None, high watermark or None)
PartitionRow = tuple[int, int, "int | None", "int | None"]


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for every amount, with one count per bucket: a batch observes a
    latency per message, and one observe (two locked increments and a walk of the buckets) per
    message of a 25,000-message batch held the event loop, and Python's lock, for some 50 ms. Uses
    the library's bucket counters, which `observe` itself increments; a histogram without them (a
    newer library) is observed value by value."""
    counters, total, bounds = (
        getattr(histogram, "_buckets", None),
        getattr(histogram, "_sum", None),
        getattr(histogram, "_upper_bounds", None),
    )
    if counters is None or total is None or bounds is None or getattr(histogram, "_labelnames", ()):
        for amount in amounts:
            histogram.observe(amount)
        return
    if not amounts:
        return
    per_bucket: dict[int, int] = {}
    for amount in amounts:
        index = bisect_left(bounds, amount)  # the first bucket whose bound is >= amount, as observe finds it
        per_bucket[index] = per_bucket.get(index, 0) + 1
    total.inc(math.fsum(amounts))
    for index, count in per_bucket.items():
        counters[index].inc(count)


class _Partitions(Collector):
    """The per-partition gauges, read when scraped: one family each, every sample labelled by
    partition (the families are never interleaved, which the text format forbids)."""

    def __init__(self, rows: Callable[[], Iterable[PartitionRow]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        offset = GaugeMetricFamily(
            "billing_partition_offset", "Last input offset processed and written, per partition.", labels=["partition"]
        )
        committed = GaugeMetricFamily(
            "billing_partition_committed_offset", "Last offset committed to Kafka, per partition.", labels=["partition"]
        )
        lag = GaugeMetricFamily(
            "billing_partition_lag", "Records between the broker's high watermark and the processed offset.", labels=["partition"]
        )
        for partition, last, commit, highwater in self._rows():
            label = [str(partition)]
            offset.add_metric(label, last)
            if commit is not None:  # unknown is not reported as 0
                committed.add_metric(label, commit)
            if highwater is not None:
                lag.add_metric(label, max(highwater - last - 1, 0))
        yield offset
        yield committed
        yield lag

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


class WorkerMetrics:
    """Everything /metrics shows for one worker. Thread-safe (prometheus_client's metrics are)."""

    def __init__(
        self, partitions: Callable[[], Iterable[PartitionRow]] = lambda: (), registry: CollectorRegistry | None = None, process: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:  # CPU seconds, resident memory, open fds, start time; Python version
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.records = Counter(
            "billing_records",
            "Input records by the outcome of the fold; each record once, however often it is delivered.",
            ["status"],
            registry=r,
        )
        for status in STATUSES:
            self.records.labels(status)
        self.rejected = Counter(
            "billing_rejected",
            "Rejected records by reason (BILLING_RULES §10); a record rejected again when sent again is not counted again.",
            ["reason"],
            registry=r,
        )
        self.redeliveries = Counter(
            "billing_redeliveries_skipped",
            "Records skipped because the account had applied them already (a redelivery after a restart or rebalance).",
            registry=r,
        )
        self.batches = Counter("billing_batches", "Batches written to ClickHouse and acknowledged.", registry=r)
        self.unkeyed = Counter(
            "billing_unkeyed_records",
            "Records refused because their message had no key on an input topic of several partitions: a producer "
            "that does not key by account_id (docs/gateway.md). A batch delivered again counts again.",
            registry=r,
        )
        self.poisoned = Counter(
            "billing_poisoned_messages",
            "Messages ClickHouse refused to write even alone; their records "
            "were rejected as out_of_range so that billing went on (docs/security.md).",
            registry=r,
        )
        self.batch_failures = Counter(
            "billing_batch_failures", "Batch attempts that failed (ClickHouse down, disk full) and were retried.", registry=r
        )
        self.consecutive_failures = Gauge(
            "billing_batch_consecutive_failures",
            "Failed attempts in a row of the batch being processed now; 0 once it is written.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "billing_sink_batch_seconds", "Seconds to fold and write one batch (retries included).", buckets=BATCH_BUCKETS, registry=r
        )
        self.write_seconds = Histogram(
            "billing_write_seconds",
            "Seconds a batch waited for ClickHouse writes (the folding thread's waits plus its last write).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.write_wait = Counter(
            "billing_write_wait_seconds",
            "Time the worker waited for ClickHouse to finish writing a unit "
            "before the next could read. A large share of the batch seconds means ClickHouse, not the "
            "worker, limits throughput.",
            registry=r,
        )
        self.latency = Histogram(
            "billing_publish_to_queryable_seconds",
            "Per input message: from its Kafka timestamp to the moment its batch is in ClickHouse (queryable).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.last_batch = Gauge("billing_last_batch_timestamp_seconds", "Unix time the latest batch was written (0: none yet).", registry=r)
        r.register(_Partitions(partitions))
        self._rejected_ids: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def set_consecutive_failures(self, count: int) -> None:
        """The retry loop says how often in a row the current batch failed (0 when it went in)."""
        self.consecutive_failures.set(count)

    def batch_failed(self) -> None:
        self.batch_failures.inc()

    def batch_done(
        self,
        statuses: Mapping[str, int],
        reasons: Mapping[str, int],
        skipped: int,
        seconds: float,
        write_seconds: float,
        write_wait: float,
        message_timestamps: Sequence[float] = (),
        rejected_ids: Iterable[tuple[str, str, str]] | None = None,
        now: float | None = None,
    ) -> None:
        """A batch is written. `rejected_ids` ((account, record id, reason) per rejection), when
        given, replaces `reasons` and the rejected status count with the rejections not seen
        recently; `message_timestamps` are the Kafka timestamps (Unix seconds) of its messages."""
        now = time.time() if now is None else now
        counts = dict(statuses)
        by_reason = dict(reasons)
        if rejected_ids is not None:
            fresh = self._first_rejections(rejected_ids)
            counts["rejected"] = len(fresh)
            by_reason = {}
            for reason in fresh:
                by_reason[reason] = by_reason.get(reason, 0) + 1
        for status, n in counts.items():
            if n:
                self.records.labels(status).inc(n)
        for reason, n in by_reason.items():
            if n:
                self.rejected.labels(reason).inc(n)
        if skipped:
            self.redeliveries.inc(skipped)
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        self.write_seconds.observe(write_seconds)
        self.write_wait.inc(write_wait)
        observe_all(self.latency, [max(now - ts, 0.0) for ts in message_timestamps if ts > 0])
        self.last_batch.set(now)
        self.consecutive_failures.set(0)

    def _first_rejections(self, rejected_ids: Iterable[tuple[str, str, str]]) -> list[str]:
        """Reasons of the rejections not seen among the last REMEMBERED_REJECTIONS."""
        fresh = []
        with self._lock:
            remembered = self._rejected_ids
            for account, record_id, reason in rejected_ids:
                key = (account, record_id)
                if key in remembered:
                    remembered.move_to_end(key)
                    continue
                remembered[key] = None
                fresh.append(reason)
            while len(remembered) > REMEMBERED_REJECTIONS:
                remembered.popitem(last=False)
        return fresh

    def render(self) -> bytes:
        return generate_latest(self.registry)
