"""The monitoring files: the Grafana dashboard is what grafanalib generates from its Python source,
every PromQL expression (alert rules and dashboard) parses with a real PromQL parser, and the
metrics they name are metrics the worker exports."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

yaml = pytest.importorskip("yaml")
promql_parser = pytest.importorskip("promql_parser")
pytest.importorskip("grafanalib")

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
MONITORING = ROOT / "deploy" / "k8s" / "monitoring"

sys.path.insert(0, str(GRAFANA))
import dashboard as billing_dashboard  # noqa: E402  (deploy/grafana/dashboard.py)

sys.path.remove(str(GRAFANA))


def exported_metric_names() -> set[str]:
    """Sample names the worker's /metrics shows, from the metrics code itself."""
    from prometheus_client.parser import text_string_to_metric_families

    from pipeline.serve.metrics import WorkerMetrics

    m = WorkerMetrics(lambda: [(0, 5, 5, 9)])
    m.batch_done({"billed": 1, "rejected": 1}, {"unknown_model": 1}, 1, 0.1, 0.1, 0.0, [1.0])
    m.batch_failed()
    return {s.name for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def selectors(node: Any) -> Iterator[str]:
    """Metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node.name
        return
    for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from selectors(child)
    for child in getattr(node, "args", None) or []:
        yield from selectors(child)


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_targets() -> list[dict[str, Any]]:
    data = json.loads((GRAFANA / "billing.json").read_text(encoding="utf-8"))
    return [t for p in data["panels"] for t in p.get("targets", [])]


def test_committed_dashboard_is_the_generated_one() -> None:
    committed = (GRAFANA / "billing.json").read_text(encoding="utf-8")
    assert committed == billing_dashboard.render(), "run: python deploy/grafana/dashboard.py > deploy/grafana/billing.json"


def test_dashboard_has_the_panels_operators_need() -> None:
    data = json.loads(billing_dashboard.render())
    titles = {p["title"] for p in data["panels"]}
    assert {
        "Throughput (records/s by outcome)",
        "Lag per partition",
        "Batch time",
        "ClickHouse write time",
        "Batch failures",
        "Rejections by reason",
        "Accounts in arrears",
        "Revenue per hour (CNY)",
        "Publish to queryable",
    } <= titles
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    sql = [t["rawSql"] for t in dashboard_targets() if "rawSql" in t]
    assert any("bill_lines" in s and "sum(amount)" in s for s in sql) and any("arrears" in s for s in sql)


def test_every_promql_expression_parses_and_names_exported_metrics() -> None:
    exported = exported_metric_names() | {"up", "process_start_time_seconds"}
    expressions = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    expressions += [(f"dashboard {t['refId']}", t["expr"]) for t in dashboard_targets() if "expr" in t]
    assert len(expressions) > 15
    for where, expr in expressions:
        parsed = promql_parser.parse(expr)  # raises on a syntax error
        names = set(selectors(parsed))
        assert names, f"{where}: no metric in {expr}"
        assert names <= exported, f"{where}: {names - exported} not exported by the worker"


def test_the_parser_rejects_broken_promql() -> None:
    """Negative control: the check above would catch a typo."""
    with pytest.raises(Exception):
        promql_parser.parse("sum by (job (rate(billing_records_total[5m]))")


def test_alert_rules_cover_the_failure_modes() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert {
        "BillingLagGrowing",
        "BillingBatchFailingRepeatedly",
        "BillingWorkerDown",
        "BillingWorkerRestarting",
        "BillingNoBatchWhileLagging",
        "BillingUnkeyedProducer",
    } <= set(rules)
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert "billing_batch_consecutive_failures" in rules["BillingBatchFailingRepeatedly"]["expr"]
    assert "billing_last_batch_timestamp_seconds" in rules["BillingNoBatchWhileLagging"]["expr"]
    assert "billing_unkeyed_records_total" in rules["BillingUnkeyedProducer"]["expr"]


def test_scrape_configs_point_at_the_worker_api() -> None:
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "billing-worker" and job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["port"] == 8080
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text(encoding="utf-8"))
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    (monitor,) = yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text(encoding="utf-8"))
    assert monitor["kind"] == "PodMonitor"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    assert {"targetLabel": "job", "replacement": "billing-worker", "action": "replace"} in endpoint["relabelings"]
