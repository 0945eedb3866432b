"""ClickHouse connections and schema migration, for chdb:// (embedded) and http(s):// alike."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pipeline.settings import redact

DDL_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse"
DATABASE = "billing"


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse cannot be reached or opened; the message says what to do."""


def connect(url: str) -> Client:
    """A client on the billing database, created if missing."""
    try:
        if url.startswith("chdb:"):
            return _connect_chdb(url)
        return _connect_server(url)
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
    path = urlsplit(url).path
    Path(path).mkdir(parents=True, exist_ok=True)
    bootstrap = clickhouse_connect.get_client(dsn=url)
    bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    return clickhouse_connect.get_client(dsn=url, database=DATABASE)


def _connect_server(url: str) -> Client:
    parts = urlsplit(url)
    database = parts.path.strip("/") or DATABASE
    admin = clickhouse_connect.get_client(dsn=parts._replace(path="").geturl())
    admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    return clickhouse_connect.get_client(dsn=url, database=database)


def ddl_statements(ddl_dir: Path = DDL_DIR) -> list[str]:
    """Statements of every .sql file in order; comments dropped, split on ';' at line ends."""
    statements = []
    for path in sorted(ddl_dir.glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        statements += [s.strip() for s in re.split(r";\s*\n", text) if s.strip().strip(";")]
    return [s.rstrip(";") for s in statements]


def migrate(client: Client, ddl_dir: Path = DDL_DIR) -> int:
    """Apply the DDL idempotently (every statement is IF NOT EXISTS); returns the count."""
    statements = ddl_statements(ddl_dir)
    for statement in statements:
        client.command(statement)
    return len(statements)


def preload_insert_support() -> None:
    """clickhouse-connect imports pandas (when installed) on the first insert, about 0.4 s here;
    a worker does it at startup so that its first batch does not wait for it."""
    from clickhouse_connect.driver import options

    getattr(options, "pd", None)
