"""The worker's /metrics: parsed with prometheus_client's own parser (what a scraper reads), every
family found with its samples."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pipeline.serve.metrics import WorkerMetrics

FAMILIES = {
    "billing_records": "counter",
    "billing_rejected": "counter",
    "billing_redeliveries_skipped": "counter",
    "billing_batches": "counter",
    "billing_batch_failures": "counter",
    "billing_batch_consecutive_failures": "gauge",
    "billing_sink_batch_seconds": "histogram",
    "billing_write_seconds": "histogram",
    "billing_write_wait_seconds": "counter",
    "billing_publish_to_queryable_seconds": "histogram",
    "billing_last_batch_timestamp_seconds": "gauge",
    "billing_partition_offset": "gauge",
    "billing_partition_committed_offset": "gauge",
    "billing_partition_lag": "gauge",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
}


def parse(text: str) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    """family -> (type, {(sample name, sorted labels): value}); fails on a name declared twice."""
    out: dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"family {family.name} declared twice"
        out[family.name] = (family.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples})
    return out


def worker_metrics(rows: list[tuple[int, int, int | None, int | None]]) -> WorkerMetrics:
    return WorkerMetrics(lambda: rows)


def test_every_family_parses_with_its_samples() -> None:
    m = worker_metrics([(0, 10, 8, 20), (1, 5, None, None), (2, 7, 7, 8)])
    m.batch_done(
        {"billed": 7, "rejected": 2},
        {"unknown_model": 2},
        skipped=4,
        seconds=1.25,
        write_seconds=0.75,
        write_wait=0.5,
        message_timestamps=[99.0, 98.0],
        now=100.0,
    )
    m.batch_failed()
    families = parse(m.render().decode())
    for name, kind in FAMILIES.items():
        assert name in families, name
        assert families[name][0] == kind, (name, families[name][0])
        assert families[name][1], f"{name} has no samples"
    assert not [n for n, (t, _) in families.items() if t == "unknown"]
    samples = {k: v for _, (_, s) in families.items() for k, v in s.items()}
    assert samples[("billing_records_total", (("status", "billed"),))] == 7
    assert samples[("billing_records_total", (("status", "duplicate"),))] == 0  # every status is there from the start
    assert samples[("billing_rejected_total", (("reason", "unknown_model"),))] == 2
    assert samples[("billing_redeliveries_skipped_total", ())] == 4
    assert samples[("billing_batch_failures_total", ())] == 1
    assert samples[("billing_sink_batch_seconds_count", ())] == 1 and samples[("billing_sink_batch_seconds_sum", ())] == 1.25
    assert samples[("billing_sink_batch_seconds_bucket", (("le", "1.0"),))] == 0  # buckets: p99 can be computed
    assert samples[("billing_sink_batch_seconds_bucket", (("le", "2.5"),))] == 1
    assert samples[("billing_write_seconds_sum", ())] == 0.75
    assert samples[("billing_write_wait_seconds_total", ())] == 0.5
    assert samples[("billing_publish_to_queryable_seconds_count", ())] == 2
    assert samples[("billing_publish_to_queryable_seconds_sum", ())] == 3.0  # 1 s and 2 s
    assert samples[("billing_last_batch_timestamp_seconds", ())] == 100.0
    lag = families["billing_partition_lag"][1]
    assert lag == {("billing_partition_lag", (("partition", "0"),)): 9, ("billing_partition_lag", (("partition", "2"),)): 0}
    committed = families["billing_partition_committed_offset"][1]
    assert ("billing_partition_committed_offset", (("partition", "1"),)) not in committed  # unknown: not reported as 0
    assert len(families["billing_partition_offset"][1]) == 3


def test_a_reason_with_quotes_and_newlines_round_trips() -> None:
    m = worker_metrics([])
    m.batch_done({"rejected": 1}, {'odd "reason"\n': 1}, 0, 0.1, 0.0, 0.0)
    samples = parse(m.render().decode())["billing_rejected"][1]
    assert samples == {("billing_rejected_total", (("reason", 'odd "reason"\n'),)): 1}


def test_a_rejection_sent_again_is_counted_once() -> None:
    m = worker_metrics([])
    first = [("acc-1", "ev-1", "unknown_model"), ("acc-1", "ev-2", "invalid_api_key")]
    m.batch_done({"billed": 3, "rejected": 2}, {"unknown_model": 1, "invalid_api_key": 1}, 0, 0.1, 0.0, 0.0, rejected_ids=first)
    # the same file published again: the fold rejects both again (ClickHouse keeps one row each)
    again = [("acc-1", "ev-1", "unknown_model"), ("acc-1", "ev-2", "invalid_api_key"), ("acc-2", "ev-1", "unknown_model")]
    m.batch_done({"duplicate": 3, "rejected": 3}, {"unknown_model": 2, "invalid_api_key": 1}, 0, 0.1, 0.0, 0.0, rejected_ids=again)
    families = parse(m.render().decode())
    records = families["billing_records"][1]
    assert records[("billing_records_total", (("status", "rejected"),))] == 3  # acc-2's is new
    assert records[("billing_records_total", (("status", "billed"),))] == 3
    reasons = families["billing_rejected"][1]
    assert reasons[("billing_rejected_total", (("reason", "unknown_model"),))] == 2
    assert reasons[("billing_rejected_total", (("reason", "invalid_api_key"),))] == 1


def test_consecutive_failures_gauge_follows_the_retry_loop() -> None:
    m = worker_metrics([])
    m.set_consecutive_failures(3)
    assert parse(m.render().decode())["billing_batch_consecutive_failures"][1] == {("billing_batch_consecutive_failures", ()): 3}
    m.batch_done({}, {}, 0, 0.1, 0.0, 0.0)
    assert parse(m.render().decode())["billing_batch_consecutive_failures"][1] == {("billing_batch_consecutive_failures", ()): 0}


def test_two_workers_in_one_process_have_their_own_registries() -> None:
    a, b = worker_metrics([]), worker_metrics([])
    a.batch_failed()
    assert parse(b.render().decode())["billing_batch_failures"][1] == {("billing_batch_failures_total", ()): 0}


def test_a_batch_of_latencies_counts_as_one_observe_each() -> None:
    """The per-message latencies are counted per bucket (metrics.observe_all); a scraper reads the
    same buckets, count and sum as from an observe per message, bounds included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from pipeline.serve.metrics import LATENCY_BUCKETS, observe_all

    amounts = [0.0, 0.05, 0.0500001, 0.3, 1.0, 1.0, 2.4, 59.9, 3600.0, 3600.5, 7200.0] + [i / 997 for i in range(5000)]
    one, bulk = CollectorRegistry(), CollectorRegistry()
    each = Histogram("lat", "h", buckets=LATENCY_BUCKETS, registry=one)
    for amount in amounts:
        each.observe(amount)
    observe_all(Histogram("lat", "h", buckets=LATENCY_BUCKETS, registry=bulk), amounts)
    observe_all(Histogram("other", "h", buckets=LATENCY_BUCKETS, registry=bulk), [])
    expected, got = parse(generate_latest(one).decode())["lat"][1], parse(generate_latest(bulk).decode())["lat"][1]
    assert got.keys() == expected.keys()
    for sample, value in expected.items():
        assert got[sample] == value if sample[0] != "lat_sum" else abs(got[sample] - value) < 1e-6, sample  # a sum in another order
    assert got[("lat_bucket", (("le", "0.05"),))] == 1 + 1 + 50  # 0.0, 0.05 and i/997 <= 0.05: le is inclusive
    assert got[("lat_count", ())] == len(amounts)
