"""The billing Grafana dashboard, built with grafanalib (the dashboards-as-code library).

    python deploy/grafana/dashboard.py > deploy/grafana/billing.json

tests/deploy/test_observability.py checks that the committed billing.json is what this file
generates, and parses every PromQL expression in it. Two data sources, chosen when the dashboard
is imported or from the variables at the top: Prometheus (the workers' /metrics) and ClickHouse
(the grafana-clickhouse-datasource plugin) for money, which Prometheus must not hold.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import attr
from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard, GridPos, Stat, Target, Template, Templating, Time, TimeSeries

PROM = "${prometheus}"
CLICKHOUSE = "${clickhouse}"
JOB = 'job="billing-worker"'


@attr.s
class ClickHouseTarget:
    """A query of the grafana-clickhouse-datasource plugin v4: SQL editor, queryType `timeSeries` or `table`
    (its src/types/sql.ts); `format` 0/1 for the versions before it."""

    rawSql: str = attr.ib()
    refId: str = attr.ib(default="A")
    format: int = attr.ib(default=0)

    def to_json_data(self) -> dict[str, Any]:
        return {
            "datasource": {"type": "grafana-clickhouse-datasource", "uid": CLICKHOUSE},
            "editorType": "sql",
            "format": self.format,
            "queryType": "timeSeries" if self.format == 0 else "table",
            "rawSql": self.rawSql,
            "refId": self.refId,
        }


def prom(expr: str, legend: str = "", ref: str = "A") -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource={"type": "prometheus", "uid": PROM})


def series(
    title: str, targets: list[Any], x: int, y: int, unit: str = "short", description: str = "", w: int = 12, source: str = PROM
) -> TimeSeries:
    kind = "prometheus" if source == PROM else "grafana-clickhouse-datasource"
    return TimeSeries(
        title=title,
        description=description,
        dataSource={"type": kind, "uid": source},
        targets=targets,
        gridPos=GridPos(h=8, w=w, x=x, y=y),
        unit=unit,
        legendDisplayMode="table",
        legendPlacement="right",
    )


def quantiles(metric: str, ref: str = "A") -> list[Target]:
    return [
        prom(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{JOB}}}[5m])))", f"p{int(q * 100)}", chr(ord(ref) + i))
        for i, q in enumerate((0.5, 0.99))
    ]


def dashboard() -> Dashboard:
    revenue_sql = (
        "SELECT toStartOfHour(hour) AS time, sum(amount) AS revenue FROM bill_lines FINAL "
        "WHERE $__timeFilter(hour) GROUP BY time ORDER BY time"
    )
    arrears_sql = (
        "SELECT count() AS accounts_in_arrears FROM (SELECT account_id, argMax(status, seq) AS status "
        "FROM account_status GROUP BY account_id) WHERE status = 'arrears'"
    )
    panels = [
        Stat(
            title="Records per second",
            dataSource={"type": "prometheus", "uid": PROM},
            gridPos=GridPos(h=4, w=6, x=0, y=0),
            targets=[prom(f"sum(rate(billing_records_total{{{JOB}}}[5m]))")],
            format="short",
            reduceCalc="lastNotNull",
        ),
        Stat(
            title="Lag (records)",
            dataSource={"type": "prometheus", "uid": PROM},
            gridPos=GridPos(h=4, w=6, x=6, y=0),
            targets=[prom(f"sum(billing_partition_lag{{{JOB}}})")],
            format="short",
            reduceCalc="lastNotNull",
        ),
        Stat(
            title="Accounts in arrears",
            dataSource={"type": "grafana-clickhouse-datasource", "uid": CLICKHOUSE},
            gridPos=GridPos(h=4, w=6, x=12, y=0),
            targets=[ClickHouseTarget(arrears_sql, format=1)],
            format="short",
            reduceCalc="lastNotNull",
        ),
        Stat(
            title="Batch failures in a row",
            dataSource={"type": "prometheus", "uid": PROM},
            gridPos=GridPos(h=4, w=6, x=18, y=0),
            targets=[prom(f"max(billing_batch_consecutive_failures{{{JOB}}})")],
            format="short",
            reduceCalc="lastNotNull",
        ),
        series(
            "Throughput (records/s by outcome)",
            [prom(f"sum by (status) (rate(billing_records_total{{{JOB}}}[5m]))", "{{status}}")],
            0,
            4,
            "short",
            "Each record once, by the fold's outcome; redeliveries skipped are not in it.",
        ),
        series(
            "Lag per partition",
            [prom(f"max by (partition) (billing_partition_lag{{{JOB}}})", "partition {{partition}}")],
            12,
            4,
            "short",
            "Records between the broker's high watermark and the last offset written.",
        ),
        series("Batch time", quantiles("billing_sink_batch_seconds"), 0, 12, "s", "Fold and write of one batch."),
        series("ClickHouse write time", quantiles("billing_write_seconds"), 12, 12, "s", "What a batch waited for ClickHouse."),
        series(
            "Publish to queryable",
            quantiles("billing_publish_to_queryable_seconds"),
            0,
            20,
            "s",
            "From a message's Kafka timestamp to its batch being in ClickHouse.",
        ),
        series(
            "Batch failures",
            [
                prom(f"sum(increase(billing_batch_failures_total{{{JOB}}}[5m]))", "failed attempts / 5m"),
                prom(f"max(billing_batch_consecutive_failures{{{JOB}}})", "in a row", "B"),
            ],
            12,
            20,
            "short",
            "A batch is retried until it is written; never skipped.",
        ),
        series(
            "Rejections by reason",
            [prom(f"sum by (reason) (increase(billing_rejected_total{{{JOB}}}[1h]))", "{{reason}}")],
            0,
            28,
            "short",
            "Per hour; `billing rejected --reason R` lists them.",
        ),
        series(
            "Revenue per hour (CNY)",
            [ClickHouseTarget(revenue_sql)],
            12,
            28,
            "none",
            "Bill lines' amounts by bill hour, from ClickHouse.",
            source=CLICKHOUSE,
        ),
    ]
    return Dashboard(
        title="Billing pipeline",
        uid="billing-pipeline",
        description="Throughput, lag, batch and write times, failures, rejections (Prometheus); arrears and revenue (ClickHouse).",
        tags=["billing"],
        timezone="browser",
        time=Time("now-6h", "now"),
        refresh="30s",
        templating=Templating(
            list=[
                Template(name="prometheus", label="Prometheus", query="prometheus", type="datasource", default="Prometheus"),
                Template(
                    name="clickhouse", label="ClickHouse", query="grafana-clickhouse-datasource", type="datasource", default="ClickHouse"
                ),
            ]
        ),
        panels=panels,
    ).auto_panel_ids()


def render() -> str:
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
