"""The query commands as a user meets them on a running stack: consistent filters and exit codes,
rejected records as JSON objects with their timestamps, headers without rows, --limit."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.integration.stack import Stack

pytestmark = pytest.mark.integration
ACCOUNT = "acct-cli-output"


@pytest.fixture(scope="module")
def published(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    records = [
        {"type": "api_key.created", "account_id": ACCOUNT, "timestamp": "2024-07-01T10:00:00+08:00", "api_key_id": "k1"},
        *(
            {
                "account_id": ACCOUNT,
                "timestamp": f"2024-07-01T{10 + i}:00:05+08:00",
                "event_id": f"cli-{i}",
                "api_key_id": "k1",
                "model": "xingchen-lite",
                "input_tokens": 10,
                "output_tokens": 5,
            }
            for i in range(5)
        ),
        # breaks the schema (tokens as a string) but has a good timestamp
        {
            "account_id": ACCOUNT,
            "timestamp": "2024-07-01T09:30:00Z",
            "event_id": "cli-bad",
            "api_key_id": "k1",
            "model": "xingchen-lite",
            "input_tokens": "ten",
            "output_tokens": 5,
        },
    ]
    path = tmp_path_factory.mktemp("cli") / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stack.publish(path)
    stack.wait()
    return stack


@pytest.mark.parametrize("command", ["bills", "settlements", "rejected", "account"])
def test_an_unknown_account_exits_2_everywhere(published: Stack, command: str) -> None:
    args = [command, "NOPE"] if command == "account" else [command, "--account", "NOPE"]
    result = published.cli(*args, check=False)
    assert result.returncode == 2 and result.stderr == "billing: no account 'NOPE' has any record yet\n"


def test_rejected_json_has_the_record_as_an_object_and_its_timestamp(published: Stack) -> None:
    (row,) = [r for r in published.rejected("--account", ACCOUNT) if r["event_id"] == "cli-bad"]
    assert row["reason"] == "invalid_schema"
    assert isinstance(row["record"], dict) and row["record"]["input_tokens"] == "ten"
    assert row["timestamp"] == "2024-07-01T17:30:00+08:00"
    assert json.loads(row["record_text"]) == row["record"]


def test_csv_without_rows_has_the_header(published: Stack) -> None:
    out = published.cli("rejected", "--account", ACCOUNT, "--reason", "api_key_limit", "--format", "csv").stdout
    assert out.strip().split(",") == ["event_id", "account_id", "reason", "detail", "timestamp", "record"]
    out = published.cli("settlements", "--account", ACCOUNT, "--format", "csv").stdout
    assert out.splitlines()[0].startswith("account_id,hour,kind,amount")


def test_limit_keeps_the_latest(published: Stack) -> None:
    rows = published.bills("--account", ACCOUNT)
    assert [r["hour"][11:13] for r in rows] == ["10", "11", "12", "13", "14"]
    result = published.cli("bills", "--account", ACCOUNT, "--limit", "2", "--format", "csv")
    assert [r["hour"][11:13] for r in csv.DictReader(io.StringIO(result.stdout))] == ["13", "14"]
    assert "showing the last 2 of 5 rows" in result.stderr
    table = published.cli("bills", "--account", ACCOUNT).stdout.splitlines()
    assert table[0].split()[:3] == ["account_id", "hour", "api_key_id"] and len(table) == 6


def test_reason_filter_and_range_checks(published: Stack, tmp_path: Path) -> None:
    assert published.cli("rejected", "--reason", "nonsense", check=False).returncode == 2
    result = published.cli("bills", "--from", "2024-07-02T00:00:00+08:00", "--to", "2024-07-01T00:00:00+08:00", check=False)
    assert result.returncode == 2 and result.stderr == "billing: --to must be after --from\n"
