"""Prometheus text exposition of the worker's counters (no client library needed for this much)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping


def _line(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: Counter[str], reasons: Counter[str], sink_seconds: float, partitions: Iterable[tuple[int, int, int | None, int | None]],
           write_wait_seconds: float = 0.0) -> str:
    """`partitions`: (partition, last processed offset, committed offset, high watermark)."""
    out = [
        "# HELP billing_records_total Input records processed, by outcome.",
        "# TYPE billing_records_total counter",
        *(_line("billing_records_total", stats.get(s, 0), {"status": s}) for s in ("billed", "applied", "duplicate", "rejected")),
        "# HELP billing_rejected_total Rejected records by reason.",
        "# TYPE billing_rejected_total counter",
        *(_line("billing_rejected_total", n, {"reason": r}) for r, n in sorted(reasons.items())),
        "# HELP billing_redeliveries_skipped_total Records skipped because the account had applied them already.",
        "# TYPE billing_redeliveries_skipped_total counter",
        _line("billing_redeliveries_skipped_total", stats.get("skipped_redeliveries", 0)),
        "# HELP billing_batches_total Batches written to ClickHouse.",
        "# TYPE billing_batches_total counter",
        _line("billing_batches_total", stats.get("batches", 0)),
        "# HELP billing_batch_failures_total Batch writes that failed and were retried.",
        "# TYPE billing_batch_failures_total counter",
        _line("billing_batch_failures_total", stats.get("batch_failures", 0)),
        "# HELP billing_batch_consecutive_failures Failures in a row of the batch being retried now (0: the last batch went in).",
        "# TYPE billing_batch_consecutive_failures gauge",
        _line("billing_batch_consecutive_failures", stats.get("consecutive_failures", 0)),
        "# HELP billing_poisoned_messages_total Messages ClickHouse refused to write; their records were rejected.",
        "# TYPE billing_poisoned_messages_total counter",
        _line("billing_poisoned_messages_total", stats.get("poisoned_messages", 0)),
        "# HELP billing_sink_batch_seconds Time spent processing and writing batches.",
        "# TYPE billing_sink_batch_seconds summary",
        _line("billing_sink_batch_seconds_sum", round(sink_seconds, 6)),
        _line("billing_sink_batch_seconds_count", stats.get("batches", 0)),
        "# HELP billing_write_wait_seconds_total Time the worker waited for ClickHouse to finish writing a unit before the next "
        "could read. A large share of the batch seconds means ClickHouse, not the worker, limits throughput.",
        "# TYPE billing_write_wait_seconds_total counter",
        _line("billing_write_wait_seconds_total", round(write_wait_seconds, 6)),
        "# HELP billing_partition_offset Last input offset processed and written, per partition.",
        "# TYPE billing_partition_offset gauge",
        "# HELP billing_partition_committed_offset Last offset committed to Kafka, per partition.",
        "# TYPE billing_partition_committed_offset gauge",
        "# HELP billing_partition_lag Records between the broker's high watermark and the processed offset.",
        "# TYPE billing_partition_lag gauge",
    ]
    for partition, offset, committed, highwater in partitions:
        labels = {"partition": str(partition)}
        out.append(_line("billing_partition_offset", offset, labels))
        if committed is not None:
            out.append(_line("billing_partition_committed_offset", committed, labels))
        if highwater is not None:
            out.append(_line("billing_partition_lag", max(highwater - offset - 1, 0), labels))
    return "\n".join(out) + "\n"
