"""ClickHouse connections and schema migration, for chdb:// (embedded) and http(s):// alike."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pipeline.settings import redact

DDL_DIR = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
CLUSTER_DDL_DIR = DDL_DIR / "cluster"
DATABASE = "billing"
# The embedded engine's allocator (jemalloc, built into chdb, read from JE_MALLOC_CONF when the engine
# loads): freed pages go back to the system after 1 s instead of chdb's 5 s. A worker's RSS is the
# engine's transient memory (a unit's inserts, reads, merges) held on top of its steady state; with
# the 5 s default, the memory of several units' inserts and reads stays resident at once. Measured
# (bench.gateway_processor, gw_100k, reads beside writes): RSS peak 1,039-1,063 against 1,108-1,128
# MiB, throughput within noise (16,739-17,223 against 17,538-18,089 records/s); 0 s gave 90 MiB less
# but 17% slower. An operator's own JE_MALLOC_CONF wins (docs/operations.md).
ENGINE_ALLOCATOR = "dirty_decay_ms:1000"


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse cannot be reached or opened; the message says what to do."""


def connect(url: str, options: dict[str, Any] | None = None) -> Client:
    """A client on the billing database, created if missing. `options` are extra get_client
    arguments for a server (TLS, the cluster settings: chcluster.client_options)."""
    try:
        if url.startswith("chdb:"):
            return _connect_chdb(url)
        return _connect_server(url, options or {})
    except ClickHouseUnavailable:
        raise
    except Exception as exc:  # the drivers raise many kinds; the user needs one clear message
        message = str(exc).replace(url, redact(url))
        if "Cannot lock file" in message or "status" in message and "lock" in message.lower():
            raise ClickHouseUnavailable(
                f"the embedded ClickHouse at {redact(url)} is open in another process "
                "(is `billing up` running? then use the other commands while it runs, they go through it)"
            ) from None
        raise ClickHouseUnavailable(f"cannot open ClickHouse at {redact(url)}: {message.splitlines()[0][:300]}") from None


def _connect_chdb(url: str) -> Client:
    os.environ.setdefault("JE_MALLOC_CONF", ENGINE_ALLOCATOR)  # read once, when this first connection loads the engine
    path = urlsplit(url).path
    Path(path).mkdir(parents=True, exist_ok=True)
    bootstrap = clickhouse_connect.get_client(dsn=url)
    try:
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    finally:
        bootstrap.close()  # its own engine handle (a worker opens one client per insert lane too)
    return clickhouse_connect.get_client(dsn=url, database=DATABASE)


def _connect_server(url: str, options: dict[str, Any]) -> Client:
    parts = urlsplit(url)
    database = parts.path.strip("/") or DATABASE
    admin = clickhouse_connect.get_client(dsn=parts._replace(path="").geturl(), **options)
    try:
        if not admin.query("SELECT count() FROM system.databases WHERE name = {d:String}", parameters={"d": database}).result_rows[0][0]:
            # only then: a production worker's user has no DDL rights (`billing migrate`'s DDL user creates it first)
            admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    finally:
        admin.close()
    return clickhouse_connect.get_client(dsn=url, database=database, **options)


def ddl_statements(ddl_dir: Path = DDL_DIR) -> list[str]:
    """Statements of every .sql file in order; comments dropped, split on ';' at line ends."""
    statements = []
    for path in sorted(ddl_dir.glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        statements += [s.strip() for s in re.split(r";\s*\n", text) if s.strip().strip(";")]
    return [s.rstrip(";") for s in statements]


def migrate(client: Client, ddl_dir: Path = DDL_DIR, cluster: bool = False) -> int:
    """Apply the pending numbered migrations (pipeline/store/migrations.py); returns the statements run.
    On a cluster the same versions come from the cluster/ twin of the DDL."""
    from pipeline.store import migrations

    if cluster and ddl_dir == DDL_DIR:
        ddl_dir = CLUSTER_DDL_DIR
    return sum(len(m.statements) for m in migrations.apply(client, ddl_dir, cluster=cluster))


def preload_insert_support() -> None:
    """clickhouse-connect imports pandas (when installed) on the first insert, about 0.4 s here;
    a worker does it at startup so that its first batch does not wait for it."""
    from clickhouse_connect.driver import options

    getattr(options, "pd", None)
