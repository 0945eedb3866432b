"""Settlement, arrears and recovery on the embedded stack, against the independent oracle."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.demo.workload import generate_settlement, write_jsonl
from tests.integration.stack import Stack, read_topic
from tests.integration.test_pipeline import accounts_of
from tests.oracle import expected

pytestmark = pytest.mark.integration
ACCOUNT_FIELDS = ("status", "cash_balance", "debt", "free_tokens_left", "last_settled_hour")


def test_multi_hour_arrears_and_recovery(stack: Stack, tmp_path: Path) -> None:
    lines = generate_settlement(3000, seed=5)
    path = tmp_path / "settlement.jsonl"
    write_jsonl(path, lines)
    stack.publish(path)
    stack.wait()
    want = expected(lines)
    accounts = accounts_of(lines)

    for account, summary in want.account_rows().items():
        got = stack.json_lines("account", account)[0]
        assert {k: got[k] for k in ACCOUNT_FIELDS} == {k: summary[k] for k in ACCOUNT_FIELDS}, account
        assert [(v["voucher_id"], v["remaining"]) for v in got["vouchers"]] == [
            (v["voucher_id"], v["remaining"]) for v in summary["vouchers"]
        ]

    # the status topic, as an API gateway reads it: every change in order, the latest wins
    seen = defaultdict(list)
    for key, value in read_topic(stack.kafka(), "billing.account-status"):
        change = json.loads(value)
        assert key.decode() == change["account_id"]
        if change["account_id"] in accounts:
            seen[change["account_id"]].append(change["status"])
    wanted = defaultdict(list)
    for account, status in want.status_changes:
        wanted[account].append(status)
    assert dict(seen) == dict(wanted)
    assert any("arrears" in s and s[-1] == "active" for s in wanted.values())  # someone recovered

    # every settled cent: settlements add up to the bill lines of the closed hours
    settlements = [s for s in stack.json_lines("settlements") if s["account_id"] in accounts]
    settled = defaultdict(Decimal)
    for s in settlements:
        settled[(s["account_id"], s["hour"])] += Decimal(s["amount"])
    billed = defaultdict(Decimal)
    for b in stack.bills():
        if b["account_id"] in accounts:
            billed[(b["account_id"], b["hour"])] += Decimal(b["amount"])
    assert settled == billed  # the closing ticks close every hour of this workload
    assert sum(settled.values()) == sum(billed.values()) > 0
    # and each account's settlements are the oracle's, in order (amount, voucher and cash parts, debt)
    fields = ("hour", "kind", "amount", "voucher_part", "cash_part", "debt_after", "balance_after")
    got_rows, want_rows = defaultdict(list), defaultdict(list)
    for s in settlements:
        got_rows[s["account_id"]].append(tuple(s[f] for f in fields))
    for s in want.settlement_rows():
        want_rows[s["account_id"]].append(tuple(s[f] for f in fields))
    assert dict(got_rows) == dict(want_rows)
