"""The product on the cluster DDL in the real engine (tests/cluster_engine.py says how, and what it
cannot show): a failed unit's rows are rolled back, and every read runs and agrees with the single
server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.store.statestore import SEQ_COLUMNS
from tests.integration.test_sql_views import doc_examples

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def outcome() -> dict:
    """One run of tests/cluster_engine.py in its own process (the engine's config is per process)."""
    result = subprocess.run([sys.executable, "-m", "tests.cluster_engine"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_failed_units_rows_are_rolled_back_on_the_shards(outcome: dict) -> None:
    """ClickHouse refuses a DELETE on a Distributed table: the roll back deletes from each
    table's shards (`_local`, ON CLUSTER), and leaves no row past a commit point. (Before, on a
    cluster, the roll back failed and the rows stayed: 604 in this run.)"""
    assert "cluster: billing" not in outcome["failed"] and "single: billing" not in outcome["failed"]
    assert outcome["rows_past_commit"] == {"single": 0, "cluster": 0}
    assert outcome["on_cluster"] == [f"DELETE FROM {table}_local ON" for table in SEQ_COLUMNS]


def test_the_roll_back_of_a_unit_of_many_accounts_runs(outcome: dict) -> None:
    """10,000 accounts with 128-character ids: on one server the values are bound (written into
    the text, they passed ClickHouse's max_query_size from about 5,000 accounts on, and the roll
    back failed); on a cluster they are written into the text, in chunks under it."""
    large = outcome["large_roll_back"]
    assert large["failed"] == {}
    assert large["statements"] > len(SEQ_COLUMNS) and large["statements"] % len(SEQ_COLUMNS) == 0
    assert large["largest_bytes"] <= 262_144  # ClickHouse's default max_query_size


def test_every_read_runs_on_the_cluster_and_agrees_with_one_server(outcome: dict) -> None:
    """The CLI's and the console's queries, the rebill's, the worker's state loads, every SQL view
    and every example of docs/sql.md: none refused on one shard or on two (a double-distributed subquery is refused on two
    unless distributed_product_mode='local' is sent, as chcluster.CLUSTER_SETTINGS does), and on one
    shard each gives what the single server gives."""
    assert outcome["bills"] > 500
    assert {"console.overview", "console.accounts", "queries.rejected", "view rejected_records", "view rebill_changes"} <= set(
        outcome["checked"]
    )
    assert sum(read.startswith("docs/sql.md ") for read in outcome["checked"]) == len(doc_examples())
    assert outcome["failed"] == {}
    assert outcome["differ"] == []
