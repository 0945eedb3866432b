"""What makes the commit point hold on a ClickHouse cluster, sent by the code and checked at start.

The worker writes a batch's facts, then the account snapshots (the commit point), then commits
the Kafka offsets. On a sharded, replicated cluster behind Distributed tables that order holds
only if

- a Distributed insert returns once the shards have the rows (`insert_distributed_sync=1`, newer
  name `distributed_foreground_insert`): otherwise the snapshot can land before the rows it
  commits, or not at all while the offsets are committed;
- each shard insert is acknowledged by a quorum of replicas, in order (`insert_quorum='auto'`,
  a majority, and `insert_quorum_parallel=0`): otherwise the snapshot can vanish with a replica
  that failed after acknowledging it;
- reads see every quorum-acknowledged insert (`select_sequential_consistency=1`): a worker
  taking over a partition after a rebalance must not read a snapshot older than its lines from a
  lagging replica (it would bill twice).

And one setting for the queries to run at all: a subquery or JOIN over a Distributed table inside
a query over another one (the rejections views, the console's overview and account details) is
refused by default ("Double-distributed IN/JOIN subqueries is denied").
`distributed_product_mode='local'` runs it against each shard's local table, which is exact
because every table with an account is sharded by it: an account's rows meet on one shard. A
subquery over a table sharded otherwise (rebill_runs, by run id) is written GLOBAL (migration 007);
tests/deploy checks that.

With BILLING_CLICKHOUSE_CLUSTER=1 every query and insert of the worker carries these settings,
and the worker checks at start that the server took them (a profile with `readonly` or a
constraint can refuse or pin them) and that the tables are the replicated cluster ones.
"""

from __future__ import annotations

from typing import Any

from pipeline.settings import Settings

CLUSTER_SETTINGS: dict[str, Any] = {
    "insert_distributed_sync": 1,
    "insert_quorum": "auto",
    "insert_quorum_parallel": 0,
    "select_sequential_consistency": 1,
    "distributed_product_mode": "local",
}


class ClusterConsistencyError(RuntimeError):
    """The server does not apply a setting the commit point needs; the message names it."""


def client_options(settings: Settings | None, url: str) -> dict[str, Any]:
    """Extra clickhouse_connect.get_client arguments: TLS for https:// and the cluster settings."""
    if settings is None or url.startswith("chdb:"):
        return {}
    options: dict[str, Any] = {}
    if url.startswith("https:"):
        options["verify"] = settings.clickhouse_verify
        if settings.clickhouse_ca_file:
            options["ca_cert"] = settings.clickhouse_ca_file
    if settings.clickhouse_cluster:
        options["settings"] = dict(CLUSTER_SETTINGS)
    return options


def _normal(value: Any) -> str:
    return str(value).strip().strip("'").lower()


def check(client: Any, expected: dict[str, Any] | None = None) -> dict[str, str]:
    """The values the server applies to this client's queries, compared with `expected`
    (CLUSTER_SETTINGS); raises ClusterConsistencyError on any difference. Returns them."""
    expected = CLUSTER_SETTINGS if expected is None else expected
    names = list(expected)
    # no settings on this query: what the client sends with every query is what is checked
    rows = client.query("SELECT name, value FROM system.settings WHERE name IN {n:Array(String)}", parameters={"n": names}).result_rows
    found = {str(name): str(value) for name, value in rows}
    wrong = [
        f"{name}={found.get(name, 'unknown')} (need {want})"
        for name, want in expected.items()
        if _normal(found.get(name, "")) != _normal(want)
    ]
    if wrong:
        raise ClusterConsistencyError(
            "ClickHouse does not apply the settings that make a batch's commit point hold on a cluster: "
            + ", ".join(wrong)
            + ". Allow them in the billing user's profile (deploy/README.md, ClickHouse cluster)."
        )
    return found


def check_replicated(client: Any, tables: list[str]) -> None:
    """On a cluster every billing table must be Distributed over a Replicated*MergeTree `_local`
    table: a plain table on one node would make the settings above meaningless."""
    rows = client.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").result_rows
    engines = {str(n): str(e) for n, e in rows}
    wrong = [f"{t} is {engines.get(t, 'missing')}" for t in tables if engines.get(t) != "Distributed"]
    wrong += [
        f"{t}_local is {engines.get(t + '_local', 'missing')}" for t in tables if not engines.get(t + "_local", "").startswith("Replicated")
    ]
    if wrong:
        raise ClusterConsistencyError(
            "BILLING_CLICKHOUSE_CLUSTER=1 but the tables are not the cluster ones: "
            + "; ".join(wrong[:6])
            + ". Apply schemas/clickhouse/cluster/ with `billing migrate` (BILLING_CLICKHOUSE_CLUSTER=1)."
        )
