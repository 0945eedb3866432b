"""The main job end to end on the embedded default, checked against an independent oracle."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.demo.workload import generate, write_jsonl
from tests.integration.stack import Stack, bills_by_key
from tests.oracle import expected

pytestmark = pytest.mark.integration


def accounts_of(lines: list[str]) -> set[str]:
    import json

    found = set()
    for line in lines:
        try:
            body = json.loads(line)
        except ValueError:
            continue
        if isinstance(body, dict) and isinstance(body.get("account_id"), str):
            found.add(body["account_id"])
    return found


def assert_bills_match(stack: Stack, lines: list[str]) -> None:
    want = expected(lines)
    accounts = accounts_of(lines)
    got = bills_by_key(stack.bills(), accounts)
    missing = sorted(set(want.bills) - set(got))[:5]
    extra = sorted(set(got) - set(want.bills))[:5]
    assert not missing and not extra, f"lines missing {missing}, unexpected {extra}"
    wrong = [(k, got[k], want.bills[k]) for k in want.bills if got[k] != want.bills[k]][:5]
    assert not wrong, f"bill lines differ (got, want): {wrong}"


def rejection_counts(rows: list[dict], accounts: set[str]) -> Counter:
    return Counter((r["account_id"], r["event_id"], r["reason"]) for r in rows if r["account_id"] in accounts)


def test_workload_bills_and_rejections_match_the_oracle(stack: Stack, tmp_path: Path) -> None:
    lines = generate(6000, seed=11)
    path = tmp_path / "workload.jsonl"
    write_jsonl(path, lines)
    result = stack.publish(path)
    assert "published 6000 records" in result.stdout
    stack.wait()

    assert_bills_match(stack, lines)
    want = expected(lines)
    accounts = accounts_of(lines)
    got_rejections = rejection_counts(stack.rejected(), accounts)
    listed = want.listed_rejections()
    assert got_rejections == listed, (got_rejections - listed, listed - got_rejections)
    # every reason of the rule book is exercised by this workload
    assert {reason for _, _, reason in want.rejections} >= {
        "invalid_schema",
        "conflicting_duplicate",
        "unknown_model",
        "unknown_plugin",
        "no_price_in_force",
        "input_limit_exceeded",
        "context_limit_exceeded",
        "not_whitelisted",
        "invalid_api_key",
        "api_key_limit",
    }
    assert want.duplicates > 0

    # publishing the same file again: every record is a duplicate delivery, no line changes
    before = stack.bills()
    rejected_before = stack.rejected()
    stack.publish(path)
    stack.wait()
    assert stack.bills() == before
    assert stack.rejected() == rejected_before


def test_bad_lines_are_named_and_kept_and_the_rest_is_sent(stack: Stack, tmp_path: Path) -> None:
    good = {"type": "api_key.created", "account_id": "acct-bad-input", "timestamp": "2024-07-01T10:00:00+08:00", "api_key_id": "k1"}
    call = {
        "account_id": "acct-bad-input",
        "timestamp": "2024-07-01T10:00:01+08:00",
        "event_id": "bad-e1",
        "api_key_id": "k1",
        "model": "xingchen-lite",
        "input_tokens": 100,
        "output_tokens": 50,
    }
    import json

    broken = [
        ({**call, "event_id": "bad-missing"} | {"model": None}, "invalid_schema"),
        ({k: v for k, v in call.items() if k != "output_tokens"} | {"event_id": "bad-no-output"}, "invalid_schema"),
        ({**call, "event_id": "bad-type", "input_tokens": "100"}, "invalid_schema"),
        ({**call, "event_id": "bad-negative", "input_tokens": -1}, "invalid_schema"),
        ({**call, "event_id": "bad-naive", "timestamp": "2024-07-01T10:00:01"}, "invalid_schema"),
        ({**call, "event_id": "bad-kind", "type": "usage.v9"}, "invalid_schema"),
    ]
    lines = [json.dumps(good), "{not json", json.dumps(call), "", "[1, 2", *[json.dumps(b) for b, _ in broken], "\x00\x01 garbage"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = stack.publish(path, check=False)
    assert result.returncode == 0, result.stderr  # nothing read was lost: the lines that are not JSON are kept too
    assert "line 2" in result.stderr and "line 5" in result.stderr and f"line {len(lines)}" in result.stderr
    assert "published 11 records" in result.stdout  # 2 good + 6 schema-breaking + 3 not JSON, all sent
    stack.wait()
    unreadable = {
        r["detail"].rsplit("(line ", 1)[1]: r["record"]
        for r in stack.rejected("--reason", "invalid_schema")
        if r["detail"].endswith(" of bad.jsonl)")
    }
    assert unreadable == {"2 of bad.jsonl)": "{not json", "5 of bad.jsonl)": "[1, 2", f"{len(lines)} of bad.jsonl)": "\x00\x01 garbage"}
    rejected = {r["event_id"]: r for r in stack.rejected("--account", "acct-bad-input")}
    for body, reason in broken:
        row = rejected[body["event_id"]]
        assert row["reason"] == reason and row["detail"], row
        assert row["record"] == body and json.loads(row["record_text"]) == body
    bills = stack.bills("--account", "acct-bad-input")
    assert [(b["item"], b["requests"], b["amount"]) for b in bills] == [("xingchen-lite", 1, "0.000000")]


def test_a_live_stream_on_stdin_is_billed_while_it_is_still_open(stack: Stack) -> None:
    import json
    import subprocess
    import sys
    import time

    account = "acct-live-stdin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "publish", "-", "--data-dir", str(stack.data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    for record in (
        {"type": "api_key.created", "account_id": account, "timestamp": "2024-10-01T10:00:00+08:00", "api_key_id": "k"},
        {
            "account_id": account,
            "timestamp": "2024-10-01T10:00:05+08:00",
            "event_id": "live-1",
            "api_key_id": "k",
            "model": "xingchen-lite",
            "input_tokens": 10,
            "output_tokens": 5,
        },
    ):
        proc.stdin.write((json.dumps(record) + "\n").encode())
    proc.stdin.flush()
    try:
        deadline = time.monotonic() + 60
        # until the account exists, `bills --account` exits 2 (an unknown account): not billed yet
        while not stack.cli("bills", "--format", "json", "--account", account, check=False).stdout.strip():
            assert time.monotonic() < deadline, "records written to stdin were not published while it stayed open"
            time.sleep(0.5)
    finally:
        proc.stdin.close()
        proc.wait(60)
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode == 0, err
    assert b"published 2 records" in out
