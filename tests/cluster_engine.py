"""The worker's writes and every read of the product on the cluster DDL, in the real engine: run as
its own process (`python -m tests.cluster_engine`, by tests/integration/test_cluster_engine.py).

No ClickHouse cluster can run here. But the embedded engine runs a query through a Distributed
table for real when the cluster's one replica is the engine itself (its host and tcp_port): the
Distributed tables, their inserts, and ClickHouse's own rules for queries over them (a DELETE
refused, "double-distributed" subqueries refused) all apply. What does not: Keeper, so the
`_local` tables are created without replication (deploy/gen_cluster_ddl.one_node, as the DDL test
does) and a statement's `ON CLUSTER` is dropped when it runs; and more than one shard, so rows
never sit on another shard (tests/deploy checks statically what that needs: GLOBAL subqueries
over tables sharded otherwise).

In one engine, two databases fed the same workload by the batch processor: `single` (the
single-server DDL, `billing migrate`'s) and `cluster` (schemas/clickhouse/cluster/, every query
with chcluster.CLUSTER_SETTINGS, as a worker with BILLING_CLICKHOUSE_CLUSTER=1 sends them). One
unit's write fails halfway in both, so the roll back and the roll forward run. Then every read a
user or a worker makes (the CLI's queries, the console's, the rebill and its audit, the worker's
state loads, every SQL view) runs on both, and on `cluster2`: the cluster's rows behind two
shards. The output (JSON on the last line of stdout) lists what failed, what differed between
`single` and `cluster`, and the rows a roll back left past the commit points.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
HERE = "<shard><replica><host>127.0.0.1</host><port>9000</port></replica></shard>"  # a shard whose replica is this engine
# `billing` ({cluster}): one shard. `billing2`: two shards, both this engine, so every row is read
# twice through it; but ClickHouse applies its rules for queries over several shards (a
# double-distributed subquery is refused only there), which is what the `cluster2` database checks.
CLUSTERS = (
    "<clickhouse><tcp_port>9000</tcp_port><macros><cluster>billing</cluster><shard>01</shard><replica>r1</replica></macros>"
    f"<remote_servers><billing>{HERE}</billing><billing2>{HERE}{HERE}</billing2></remote_servers></clickhouse>"
)
FIXED_NOW = 1_733_000_000.0  # every write's wall clock (received_at, settled_at, ...): equal in both databases
ON_CLUSTER = " ON CLUSTER '{cluster}'"


def boot(directory: Path) -> Any:
    """The engine, started with the one-shard cluster; the handle keeps it up."""
    import chdb

    config = directory / "config.xml"
    config.write_text(CLUSTERS)
    handle = chdb.connect(f"file:{directory}/db?config-file={config}")
    for database in ("single", "cluster", "cluster2"):
        handle.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    return handle


def clients(directory: Path) -> tuple[Any, Any, Any, list[str]]:
    """(single, cluster, cluster2, statements the cluster clients were asked to run ON CLUSTER)."""
    import clickhouse_connect

    sys.path.insert(0, str(ROOT / "deploy"))
    import gen_cluster_ddl

    from pipeline.store.chclient import CLUSTER_DDL_DIR, migrate
    from pipeline.store.chcluster import CLUSTER_SETTINGS

    single = clickhouse_connect.get_client(dsn=f"chdb://{directory}/db", database="single")
    migrate(single)
    on_cluster: list[str] = []
    made = []
    for database, name in (("cluster", "{cluster}"), ("cluster2", "billing2")):
        client = clickhouse_connect.get_client(dsn=f"chdb://{directory}/db", database=database, settings=dict(CLUSTER_SETTINGS))
        for path in sorted(CLUSTER_DDL_DIR.glob("*.sql")):
            for statement in gen_cluster_ddl.ddl_statements(path):
                if not statement.startswith(("CREATE DATABASE", "INSERT")):  # a backfill: nothing to move yet
                    client.command(gen_cluster_ddl.one_node(statement).replace("'{cluster}'", f"'{name}'"))
        client.command = _without_keeper(client.command, on_cluster)
        made.append(client)
    return single, made[0], made[1], on_cluster


def _without_keeper(command: Callable[..., Any], on_cluster: list[str]) -> Callable[..., Any]:
    """`client.command`, dropping `ON CLUSTER` (no Keeper here), noting each such statement."""
    from clickhouse_connect.driver.binding import bind_query

    def run(sql: str, *args: Any, **kwargs: Any) -> Any:
        if ON_CLUSTER in sql:  # as the server would get it: the values written into the text
            on_cluster.append(bind_query(sql, kwargs.get("parameters"))[0])
        return command(sql.replace(ON_CLUSTER, ""), *args, **kwargs)

    return run


def fail_second_write_halfway() -> Callable[[], None]:
    """The second unit's write of each run stops before its snapshots (the commit point): what it
    wrote before them is rolled back. Returns a reset, for the next database's run."""
    from pipeline.store import sink

    real_send = sink.send
    sends: list[int] = []

    def half_send(client: Any, encoded: Any, *lanes: Any) -> None:
        sends.append(encoded.records)
        if len(sends) != 2:
            return real_send(client, encoded, *lanes)
        for insert in encoded.inserts:
            if insert.table == "account_state":
                raise ConnectionError("ClickHouse went away halfway through a unit (injected)")
            client.raw_insert(insert.table, insert.columns, insert.body, settings=sink.INSERT_SETTINGS, fmt=sink.INSERT_FORMAT)

    sink.send = half_send
    return sends.clear


def rows_past_commit(client: Any) -> int:
    """Rows of the seq-keyed tables above their account's snapshot (the commit point): what a
    roll back must leave none of."""
    from pipeline.store.statestore import SEQ_COLUMNS

    committed = "(SELECT account_id, max(seq) AS committed FROM account_state GROUP BY account_id)"
    return sum(
        client.query(
            f"SELECT count() FROM {table} AS t LEFT JOIN {committed} AS c ON c.account_id = t.account_id WHERE t.{column} > c.committed"
        ).result_rows[0][0]
        for table, column in SEQ_COLUMNS.items()
    )


def bill(client: Any, lines: list[str], epoch: str, cluster: bool) -> int:
    """Bills the lines, the second unit's write failing halfway; returns the rows left past the
    commit points after that failure (its roll back), before the retry."""
    from pipeline.batch.processor import BatchProcessor
    from pipeline.core.catalog import load_catalog
    from pipeline.store.storage import ClickHouseStorage
    from tests.messages import one_record_messages

    messages = one_record_messages(lines)
    storage = ClickHouseStorage(client, cluster=cluster)
    processor = BatchProcessor(client, load_catalog(), epoch, auto_tick=False, write_records=250, storage=storage)
    try:
        processor.process(messages)
        raise AssertionError("the injected failure did not happen")
    except ConnectionError:
        left = rows_past_commit(client)
        processor.process(messages)  # the retry
    processor.close()
    return left


def rebill(client: Any, start: str, end: str) -> None:
    """A rebill under a catalog that prices xingchen-plus-v2 from an earlier date, audited."""
    from pipeline.store import queries
    from pipeline.stream.rebill import audit_record

    catalog = json.loads((ROOT / "schemas" / "catalog.json").read_text())
    catalog["version"] = "cluster-engine-check"
    catalog["models"]["xingchen-plus-v2"]["prices"].insert(0, {"from": "2024-01-01", "input_per_1k": "0.004", "output_per_1k": "0.012"})
    accounts = queries.rebill_accounts(client, start, end, None)
    plan = queries.rebill_plan(client, catalog, start, end, accounts, "run-1")
    audit = audit_record("run-1", start, end, None, catalog["version"], [plan])
    audit.update(run_by="check", run_at_ms=int(FIXED_NOW * 1000))
    queries.write_rebill_audit(client, audit)


def large_roll_back(single: Any, cluster: Any, on_cluster: list[str]) -> dict[str, Any]:
    """The roll back of a unit of 10,000 accounts with ids of the longest kind (128 characters, a
    quote among them): on gateway traffic a unit touches nearly one account per record. What
    failed, and on the cluster the statements' count and their largest text."""
    from pipeline.store import statestore

    accounts = [f"{i:06d}'" + "x" * 121 for i in range(10_000)]
    found: dict[str, Any] = {"failed": {}}
    before = len(on_cluster)
    for name, client, is_cluster in (("single", single, False), ("cluster", cluster, True)):
        try:
            statestore.roll_back(client, accounts, is_cluster)
        except Exception as exc:
            found["failed"][name] = repr(exc)[:300]
    found["statements"] = len(on_cluster) - before
    found["largest_bytes"] = max((len(sql.encode()) for sql in on_cluster[before:]), default=0)
    return found


def reads(client: Any, epoch: str, accounts: list[str]) -> dict[str, Callable[[], Any]]:
    """Every read of the product, by name: the CLI's and the API's (store/queries.py), the
    console's (serve/console/data.py), the worker's (store/statestore.py), the SQL views, and the
    examples of docs/sql.md as `billing sql` runs them."""
    from pipeline.core.catalog import load_catalog
    from pipeline.serve.console import data
    from pipeline.store import queries, statestore
    from pipeline.store.sqlquery import run_sql
    from tests.integration.test_sql_views import doc_examples

    free = load_catalog().free_quota_tokens
    account = accounts[0]
    month = str(queries.bills(client, account)[0]["hour"])[:7]
    found: dict[str, Callable[[], Any]] = {
        "queries.bills": lambda: queries.bills(client),
        "queries.bills(account, range)": lambda: queries.bills(client, account, "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        "queries.rejected": lambda: queries.rejected(client),
        "queries.account": lambda: [queries.account(client, a, free) for a in accounts],
        "queries.account_ids": lambda: queries.account_ids(client),
        "queries.settlements": lambda: queries.settlements(client),
        "queries.summary": lambda: queries.summary(client),
        "queries.rebill_accounts": lambda: queries.rebill_accounts(client, "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z", None),
        "console.overview": lambda: {k: v for k, v in data.overview(client, None, None).items() if k != "computed_at"},
        "console.accounts": lambda: data.accounts(client, None),
        "console.accounts(prefix, limit)": lambda: data.accounts(client, account[:3], 2),
        "console.account": lambda: data.account(client, account, free, (1, 2, 3)),
        "console.usage": lambda: [data.usage(client, account, None, None, by) for by in data.GROUPINGS],
        "console.details": lambda: data.details(client, account, None, None),
        "console.statement": lambda: data.statement(client, account, month),
        "statestore.load_states": lambda: {a: s.to_json() for a, s in statestore.load_states(client, accounts).items()},
        "statestore.load_recent_states": lambda: sorted(statestore.load_recent_states(client, 3)),
        "statestore.processed_offsets": lambda: statestore.processed_offsets(client, epoch, [0, 1]),
        "statestore.roll_forward": lambda: statestore.roll_forward(client, accounts),
        "statestore.roll_forward_partitions": lambda: statestore.roll_forward_partitions(client, [0, 1]),
    }
    hours = sorted(str(b["hour"]) for b in queries.bills(client, account))
    params = {"account": account, "month": month + "-01", "from": hours[0][:19].replace("T", " "), "to": hours[-1][:19].replace("T", " ")}
    for name, query in doc_examples().items():  # what analysts run on the tables (docs/sql.md)
        found[f"docs/sql.md {name}"] = lambda query=query: run_sql(client, query, 100_000, 60, params)["rows"]
    views = [
        r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'View'").result_rows
    ]
    for view in sorted(views):
        found[f"view {view}"] = lambda view=view: sorted(repr(row) for row in client.query(f"SELECT * FROM {view}").result_rows)
    return found


def main() -> None:
    from pipeline.demo.workload import generate
    from pipeline.store import sink
    from tests.integration.test_pipeline import accounts_of

    sink.time = types.SimpleNamespace(time=lambda: FIXED_NOW)  # type: ignore[assignment]
    directory = Path(tempfile.mkdtemp(prefix="cluster-engine-"))
    handle = boot(directory)
    single, cluster, cluster2, on_cluster = clients(directory)
    lines = generate(1500, seed=5720)
    accounts = sorted(accounts_of(lines))
    epoch = uuid.uuid4().hex
    reset = fail_second_write_halfway()
    outcome: dict[str, Any] = {"failed": {}, "differ": [], "checked": [], "rows_past_commit": {}}
    for name, client, is_cluster in (("single", single, False), ("cluster", cluster, True)):
        reset()
        try:
            outcome["rows_past_commit"][name] = bill(client, lines, epoch, is_cluster)
            rebill(client, "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z")
        except Exception as exc:  # reported, not raised: the test shows what failed where
            outcome["failed"][f"{name}: billing"] = repr(exc)[:600]
    # the same rows on two shards (each row read twice): only whether each read runs is looked at
    for table in [r[0] for r in cluster.query("SHOW TABLES LIKE '%\\_local'").result_rows]:
        cluster2.command(f"INSERT INTO cluster2.{table} SELECT * FROM cluster.{table}")
    results: dict[str, dict[str, Any]] = {"single": {}, "cluster": {}, "cluster2": {}}
    for name, client in (("single", single), ("cluster", cluster), ("cluster2", cluster2)):
        for read, run in reads(client, epoch, accounts).items():
            try:
                results[name][read] = json.loads(json.dumps(run(), default=str, sort_keys=True))
            except Exception as exc:
                outcome["failed"][f"{name}: {read}"] = repr(exc)[:600]
    for read, value in results["single"].items():
        outcome["checked"].append(read)
        if read in results["cluster"] and results["cluster"][read] != value:
            outcome["differ"].append(read)
    outcome["on_cluster"] = [" ".join(s.split()[:4]) for s in on_cluster]
    outcome["large_roll_back"] = large_roll_back(single, cluster, on_cluster)
    outcome["bills"] = len(results["single"].get("queries.bills", []))
    handle.close()
    print(json.dumps(outcome, sort_keys=True))


if __name__ == "__main__":
    main()
