"""`billing sql`: one read-only statement on the bill views, with time and row limits.

The same function runs in the worker (POST /api/sql, on the ClickHouse thread between two
writes), in the CLI against a ClickHouse server, and in the CLI on the embedded engine when no
stack runs. ClickHouse itself enforces read-only (setting readonly=1 refuses INSERT, ALTER,
DROP, CREATE, SYSTEM and any change of settings); the statement is checked here first only for
what the engine would otherwise answer obscurely (several statements, an empty text). A long
query holds the worker's ClickHouse thread, so max_execution_time bounds it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import time
import uuid
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

DEFAULT_MAX_ROWS = 10_000
DEFAULT_TIMEOUT_S = 30.0
MAX_ROWS_CEILING = 1_000_000
MAX_TIMEOUT_S = 600.0


class SqlRefused(ValueError):
    """The statement is not something `billing sql` runs, or ClickHouse refused it: the message
    is for the user (exit 2)."""


def split_statements(sql: str) -> list[str]:
    """Statements of the text, split on ';' outside quotes and comments (ClickHouse's lexing of
    '...', "...", `...`, -- and /* */ comments); empty ones dropped."""
    statements, current, i, n = [], [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            current.append(sql[i : j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            current.append(" ")
        elif ch == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


READ_VERBS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "(")


def check_statement(sql: str) -> str:
    """The one statement to run, or SqlRefused (several statements; a verb that writes or
    administers, named in the message: some of them ClickHouse's EXPLAIN cannot even parse)."""
    statements = split_statements(sql)
    if not statements:
        raise SqlRefused("no SQL statement given")
    if len(statements) > 1:
        raise SqlRefused(f"one statement at a time: got {len(statements)} (billing sql is read-only; separate queries run separately)")
    statement = statements[0]
    verb = re.match(r"\(|[A-Za-z]+", statement)
    if verb is None or verb.group(0).upper() not in READ_VERBS:
        word = verb.group(0).upper() if verb else statement[:20]
        raise SqlRefused(f"billing sql is read-only: it runs SELECT, SHOW TABLES, DESCRIBE, EXISTS and SHOW CREATE, not {word}")
    return statement


# statement kinds `billing sql` runs, by the root of ClickHouse's own parse (EXPLAIN AST)
SELECT_KIND = "SelectWithUnionQuery"
METADATA_KINDS = ("ShowTables", "DescribeQuery", "ExistsTableQuery", "ShowCreateTableQuery")


def run_sql(
    client: Client, sql: str, max_rows: int = DEFAULT_MAX_ROWS, timeout_s: float = DEFAULT_TIMEOUT_S, params: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one read-only statement: {"columns", "types", "rows" (JSON-ready), "truncated", "elapsed_ms"}.

    Rows past `max_rows` are not returned and `truncated` says so; a query over `timeout_s` is
    stopped by ClickHouse. `params` fill the statement's {name:Type} placeholders (ClickHouse
    binds and checks them). Refusals and bad SQL raise SqlRefused with ClickHouse's reason.

    The limits and readonly=1 go in the statement's own SETTINGS clause, never in the client's
    settings: the embedded engine's driver applies those with SET on the worker's one session and
    restores them after, which readonly=1 forbids, so the worker's next write would fail (seen).
    ClickHouse's parser first names the statement's kind: a SELECT is wrapped as a subquery (so a
    FORMAT, INTO OUTFILE or SETTINGS of its own cannot follow ours), SHOW/DESCRIBE/EXISTS on
    tables get the clause appended, anything else is refused before it runs."""
    statement = check_statement(sql)
    max_rows = max(1, min(int(max_rows), MAX_ROWS_CEILING))
    timeout_s = max(0.1, min(float(timeout_s), MAX_TIMEOUT_S))
    bound = dict(params or {})
    # one row more than shown: tells whether the result was cut. GLOBAL subqueries: on a cluster the
    # worker's own queries run theirs per shard (distributed_product_mode='local', store/chcluster.py),
    # exact for what is sharded by account; an analyst's subquery may join anything, so it is sent
    # whole to every shard instead (on one server this changes nothing)
    limits = (
        f"SETTINGS readonly = 1, max_execution_time = {math.ceil(timeout_s)}, max_result_rows = {max_rows + 1}, "
        "result_overflow_mode = 'break', distributed_product_mode = 'global'"
    )
    started = time.perf_counter()
    try:
        kind, ast = _kind(client, statement, bound)
        if kind == SELECT_KIND:
            text = f"SELECT * FROM (\n{statement}\n)\n{limits}"
        elif kind in METADATA_KINDS and "Function " not in ast:
            text = f"{statement}\n{limits}"
        else:
            raise SqlRefused(
                f"billing sql is read-only: it runs SELECT, SHOW TABLES, DESCRIBE, EXISTS and SHOW CREATE on tables, not {_kind_name(kind)}"
            )
        result = client.query(text, parameters=bound)
    except SqlRefused:
        raise
    except Exception as exc:  # the driver's errors carry ClickHouse's message; the user needs it
        raise SqlRefused(_reason(exc)) from None
    rows = result.result_rows
    truncated = len(rows) > max_rows
    return {
        "columns": list(result.column_names),
        "types": [t.name for t in result.column_types],
        "rows": [[jsonable(v) for v in row] for row in rows[:max_rows]],
        "truncated": truncated,
        "max_rows": max_rows,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _kind(client: Client, statement: str, params: dict[str, str]) -> tuple[str, str]:
    """The root node of ClickHouse's parse of the statement (parsing runs nothing), and the whole AST."""
    lines = [row[0] for row in client.query(f"EXPLAIN AST {statement}", parameters=params).result_rows]
    return (lines[0].split()[0] if lines else ""), "\n".join(lines)


def _kind_name(kind: str) -> str:
    words = re.sub(r"(Query|Command)$", "", kind)
    return (re.sub(r"(?<!^)([A-Z])", r" \1", words).upper() or "this statement") + " statements"


def _reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"Code: (\d+)\. (?:DB::Exception: )?(.*?)(?: \(([A-Z_]+)\))?(?:\. \(([A-Z_]+)\))?(?:\s*\(version|$)", text, re.S)
    message = " ".join((match.group(2) if match else text).split())
    message = re.sub(r" SETTINGS max_execution_time = .*?readonly = '1'", "", message)[:500]  # our limits, echoed back
    if "readonly mode" in text or "(READONLY)" in text:
        return f"billing sql is read-only: ClickHouse refused the statement: {message}"
    if "TIMEOUT_EXCEEDED" in text:
        return f"the query ran over its time limit and was stopped (raise it with --timeout): {message}"
    if "MULTI" in text.upper() and "STATEMENT" in text.upper():
        return "one statement at a time (billing sql is read-only)"
    return f"ClickHouse refused the query: {message}"


def jsonable(value: Any) -> Any:
    """A value as JSON shows it without loss: money and big integers as decimal strings, times
    in RFC 3339 with their zone's offset (the bill views are in +08:00)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -(2**53) <= value <= 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return str(value)


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """`--param name=value` pairs; the value's type is the placeholder's ({name:Type})."""
    params = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SqlRefused(f"--param wants NAME=VALUE (NAME as in {{NAME:Type}} in the query), not {pair!r}")
        params[name] = value
    return params


def as_dicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows as {column: value}, for `--format json|csv|table`; a repeated column name keeps its last value."""
    columns = result["columns"]
    return [dict(zip(columns, row)) for row in result["rows"]]
