"""`billing sql`'s own checks (before ClickHouse sees a statement) and its JSON values."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from pipeline.store.sqlquery import SqlRefused, as_dicts, check_statement, jsonable, parse_params, split_statements


def test_split_keeps_semicolons_inside_quotes_and_drops_comments() -> None:
    assert split_statements("SELECT ';' AS a; ") == ["SELECT ';' AS a"]
    assert split_statements("SELECT `a;b`, \"c;d\" FROM t -- x; y\n") == ['SELECT `a;b`, "c;d" FROM t']
    assert split_statements("SELECT 1 /* ; */ + 1") == ["SELECT 1   + 1"]
    assert split_statements("SELECT 'it\\'s;' ; SELECT 2") == ["SELECT 'it\\'s;'", "SELECT 2"]


@pytest.mark.parametrize("text, word", [
    ("INSERT INTO t VALUES (1)", "INSERT"), ("drop table t", "DROP"), ("SYSTEM FLUSH LOGS", "SYSTEM"),
    ("-- comment\nALTER TABLE t DELETE WHERE 1", "ALTER"), ("EXPLAIN SELECT 1", "EXPLAIN"), ("SET readonly = 0", "SET"),
])
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
    assert jsonable(2 ** 64 - 1) == str(2 ** 64 - 1) and jsonable(7) == 7
    assert jsonable(float("nan")) == "nan"
    assert jsonable({"text_to_image": 2}) == {"text_to_image": 2} and jsonable(("a", 1)) == ["a", 1]
    assert as_dicts({"columns": ["a", "b"], "rows": [[1, "x"]]}) == [{"a": 1, "b": "x"}]


def test_params_are_name_value_pairs() -> None:
    assert parse_params(["account=a=b", "month=2024-09-01"]) == {"account": "a=b", "month": "2024-09-01"}
    with pytest.raises(SqlRefused, match="NAME=VALUE"):
        parse_params(["no-equals"])
    with pytest.raises(SqlRefused, match="NAME=VALUE"):
        parse_params(["1x=2"])
