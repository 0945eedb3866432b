"""The worker's /metrics text: Prometheus exposition that a scraper parses line by line."""

from __future__ import annotations

from collections import Counter

from pipeline import metrics


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def test_counters_partitions_and_the_write_wait() -> None:
    stats = Counter({"billed": 7, "rejected": 2, "batches": 3, "batch_failures": 1, "skipped_redeliveries": 4})
    reasons = Counter({"unknown_model": 2, 'odd "reason"\n': 1})
    text = metrics.render(stats, reasons, 1.25, [(0, 10, 8, 20), (1, 5, None, None)], write_wait_seconds=0.5)
    samples = _samples(text)
    assert samples['billing_records_total{status="billed"}'] == 7
    assert samples['billing_records_total{status="duplicate"}'] == 0
    assert samples['billing_rejected_total{reason="odd \\"reason\\"\\n"}'] == 1
    assert samples["billing_batch_failures_total"] == 1
    assert samples["billing_sink_batch_seconds_sum"] == 1.25 and samples["billing_sink_batch_seconds_count"] == 3
    assert samples["billing_write_wait_seconds_total"] == 0.5
    assert samples['billing_partition_lag{partition="0"}'] == 9  # high watermark 20, processed up to 10
    assert 'billing_partition_committed_offset{partition="1"}' not in samples  # unknown: not reported as 0
    for line in text.splitlines():  # every sample has a HELP and a TYPE before it
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            family = name.removesuffix("_sum").removesuffix("_count")
            assert f"# TYPE {family} " in text and f"# HELP {family} " in text
