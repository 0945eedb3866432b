"""The running worker's /metrics, read as Prometheus reads it: parsed by prometheus_client's parser,
every family found with its samples, and a file published twice counted once."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.demo.workload import generate
from pipeline.runtime import read_runtime
from tests.integration.stack import Stack
from tests.unit.serve.test_metrics import FAMILIES, parse

pytestmark = pytest.mark.integration


def scrape(stack: Stack) -> tuple[str, dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    runtime = read_runtime(stack.data_dir)
    assert runtime is not None
    with urllib.request.urlopen(runtime.api + "/metrics", timeout=10) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    assert list(text_string_to_metric_families(text))
    return content_type, {name: samples for name, (_, samples) in parse(text).items()}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in samples.items() if n == name and set(labels.items()) <= set(lbl))


def test_metrics_parse_and_a_republished_file_counts_once(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(generate(2000, seed=9202)) + "\n")
    _, before = scrape(stack)  # the stack is shared: counts below are differences
    stack.publish(path)
    stack.wait()
    content_type, first = scrape(stack)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    for name in FAMILIES:
        assert first.get(name), f"{name}: no samples"
    lag = first["billing_partition_lag"]
    assert {dict(labels)["partition"] for _, labels in lag} == {"0", "1", "2", "3"}
    assert total(first["billing_publish_to_queryable_seconds"], "billing_publish_to_queryable_seconds_count") > 0
    assert total(first["billing_sink_batch_seconds"], "billing_sink_batch_seconds_bucket", le="+Inf") > 0
    rejected = total(first["billing_records"], "billing_records_total", status="rejected")
    billed = total(first["billing_records"], "billing_records_total", status="billed")
    assert rejected > 0 and billed > 0  # the workload has bad records
    assert total(first["billing_rejected"], "billing_rejected_total") == rejected

    stack.publish(path)  # the same file again: every record is a duplicate or the same rejection again
    stack.wait()
    _, second = scrape(stack)
    assert total(second["billing_records"], "billing_records_total", status="rejected") == rejected
    assert total(second["billing_rejected"], "billing_rejected_total") == rejected
    assert total(second["billing_records"], "billing_records_total", status="billed") == billed

    def delta(after: dict, since: dict, status: str) -> float:
        return total(after["billing_records"], "billing_records_total", status=status) - total(
            since["billing_records"], "billing_records_total", status=status
        )

    # every record of the file that was billed or applied comes back as a duplicate
    taken = delta(first, before, "billed") + delta(first, before, "applied")
    assert taken > 0 and delta(second, first, "duplicate") >= taken
