"""`billing sql`'s own checks (before ClickHouse sees a statement) and its JSON values."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from pipeline.store.sqlquery import SqlRefused, as_dicts, check_statement, jsonable, parse_params, split_statements


def test_split_keeps_semicolons_inside_quotes_and_drops_comments() -> None:
    assert split_statements("SELECT ';' AS a; ") == ["SELECT ';' AS a"]
    assert split_statements('SELECT `a;b`, "c;d" FROM t -- x; y\n') == ['SELECT `a;b`, "c;d" FROM t']
    assert split_statements("SELECT 1 /* ; */ + 1") == ["SELECT 1   + 1"]
    assert split_statements("SELECT 'it\\'s;' ; SELECT 2") == ["SELECT 'it\\'s;'", "SELECT 2"]


@pytest.mark.parametrize(
    "text, word",
    [
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("drop table t", "DROP"),
        ("SYSTEM FLUSH LOGS", "SYSTEM"),
        ("-- comment\nALTER TABLE t DELETE WHERE 1", "ALTER"),
        ("EXPLAIN SELECT 1", "EXPLAIN"),
        ("SET readonly = 0", "SET"),
    ],
)
def test_statements_that_are_not_reads_are_refused_by_name(text: str, word: str) -> None:
    with pytest.raises(SqlRefused, match=f"read-only.*not {word}"):
        check_statement(text)


def test_one_statement_at_a_time() -> None:
    with pytest.raises(SqlRefused, match="one statement at a time: got 2"):
        check_statement("SELECT 1; DROP TABLE bill_lines")
    with pytest.raises(SqlRefused, match="no SQL statement"):
        check_statement(" ;; -- nothing\n")
    assert check_statement("  select 1 ;") == "select 1"
    assert check_statement("(SELECT 1) UNION ALL (SELECT 2)").startswith("(")


def test_values_as_json_show_without_loss() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    assert jsonable(Decimal("12.300000")) == "12.300000"
    assert jsonable(dt.datetime(2024, 6, 7, 1, tzinfo=shanghai)) == "2024-06-07T01:00:00+08:00"
    assert jsonable(dt.date(2024, 6, 1)) == "2024-06-01"
    assert jsonable(2**64 - 1) == str(2**64 - 1) and jsonable(7) == 7
    assert jsonable(float("nan")) == "nan"
    assert jsonable({"text_to_image": 2}) == {"text_to_image": 2} and jsonable(("a", 1)) == ["a", 1]
    assert as_dicts({"columns": ["a", "b"], "rows": [[1, "x"]]}) == [{"a": 1, "b": "x"}]


def test_params_are_name_value_pairs() -> None:
    assert parse_params(["account=a=b", "month=2024-09-01"]) == {"account": "a=b", "month": "2024-09-01"}
    with pytest.raises(SqlRefused, match="NAME=VALUE"):
        parse_params(["no-equals"])
    with pytest.raises(SqlRefused, match="NAME=VALUE"):
        parse_params(["1x=2"])


class ServerClient:
    """A ClickHouse server's client as clickhouse-connect gives it, recording what is sent (no
    server here): EXPLAIN AST answers the parse, any other query a few rows."""

    def __init__(self, kind: str = "SelectWithUnionQuery (children 1)", rows: int = 3) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []
        self.kind, self.rows = kind, rows

    def query(self, sql: str, parameters: dict[str, str] | None = None, **session: object):
        from types import SimpleNamespace

        assert not session, f"limits must ride in the statement, not in the session: {session}"
        self.sent.append((sql, dict(parameters or {})))
        if sql.startswith("EXPLAIN AST"):
            return SimpleNamespace(result_rows=[(self.kind,), (" ExpressionList (children 1)",)])
        return SimpleNamespace(
            result_rows=[(i, Decimal("1.500000")) for i in range(self.rows)],
            column_names=("n", "amount"),
            column_types=[SimpleNamespace(name="UInt64"), SimpleNamespace(name="Decimal(18, 6)")],
        )

    def command(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("billing sql sends no SET or other command to a server")


def test_against_a_server_billing_sql_reads_with_the_limits_in_the_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    """`billing sql` with BILLING_CLICKHOUSE=https://... goes straight to the server (DirectReader):
    the parse first, then the statement wrapped as a subquery with readonly=1 and the limits in its
    own SETTINGS clause, the parameters bound by the server, one row more than shown."""
    from pipeline.settings import Settings
    from pipeline.store import reader as reader_module

    server = ServerClient(rows=3)
    monkeypatch.setattr(reader_module, "connect", lambda url, options: server)
    reader = reader_module.open_reader(Settings(clickhouse="https://reader:secret@clickhouse.example:8443/billing"), 1_000_000)
    assert isinstance(reader, reader_module.DirectReader)
    result = reader.sql("SELECT n, amount FROM hourly_bills WHERE account_id = {a:String}", 2, 5, {"a": "x'; DROP"})
    (parse, parse_params), (text, params) = server.sent
    assert parse.startswith("EXPLAIN AST SELECT n, amount") and parse_params == {"a": "x'; DROP"}
    assert text.startswith("SELECT * FROM (\nSELECT n, amount FROM hourly_bills WHERE account_id = {a:String}\n)")
    assert text.endswith(
        "SETTINGS readonly = 1, max_execution_time = 5, max_result_rows = 3, result_overflow_mode = 'break', distributed_product_mode = 'global'"
    )
    assert params == {"a": "x'; DROP"}  # bound by ClickHouse, never pasted into the text
    assert result["rows"] == [[0, "1.500000"], [1, "1.500000"]] and result["truncated"] is True
    refused = ServerClient(kind="AlterQuery (children 2)")
    monkeypatch.setattr(reader_module, "connect", lambda url, options: refused)
    with pytest.raises(SqlRefused, match="read-only"):
        reader_module.open_reader(Settings(clickhouse="http://clickhouse:8123/billing"), 1_000_000).sql("SELECT 1", 10, 5)
    assert len(refused.sent) == 1  # parsed, never run
