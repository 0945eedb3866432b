"""The fold's settlements, statuses and account summaries equal the independent oracle's."""

from __future__ import annotations

from collections import defaultdict

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.control import sign_line
from pipeline.core.fold import apply
from pipeline.core.records import parse_record
from pipeline.core.settlement import status_of
from pipeline.core.state import AccountState
from pipeline.core.timestamps import format_ts
from pipeline.demo.workload import generate_settlement
from pipeline.store.queries import money
from tests.oracle import assert_settlement_totals, expected
from tests.unit.helpers import CONTROL_KEY

SETTLEMENT_FIELDS = ("amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after")


def run_fold(lines: list[str]) -> tuple[dict[str, AccountState], list[dict], list[tuple[str, str]]]:
    catalog = load_catalog()
    states: dict[str, AccountState] = {}
    settlements, changes = [], []
    for line in lines:
        record = parse_record(sign_line(line.encode(), CONTROL_KEY), "", CONTROL_KEY)  # the workload's ticks, as an operator's
        state = states.setdefault(record.account_id, AccountState(record.account_id))
        outcome = apply(state, record, catalog)
        for s in outcome.settlements:
            row = {"account_id": s.account_id, "hour": format_ts(s.hour_us), "kind": s.kind}
            row.update({name: money(getattr(s, name)) for name in SETTLEMENT_FIELDS})
            settlements.append(row)
        changes.extend((c.account_id, c.status) for c in outcome.status_changes)
    return states, settlements, changes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_settlements_statuses_and_accounts_match_the_oracle(seed: int) -> None:
    lines = generate_settlement(3000, seed=seed)
    want = expected(lines)
    assert_settlement_totals(want)
    states, settlements, changes = run_fold(lines)

    by_account = defaultdict(list)
    for row in settlements:
        by_account[row["account_id"]].append(row)
    want_by_account = defaultdict(list)
    for row in want.settlement_rows():
        want_by_account[row["account_id"]].append({k: row[k] for k in ("account_id", "hour", "kind", *SETTLEMENT_FIELDS)})
    assert dict(by_account) == dict(want_by_account)

    def per_account(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
        grouped = defaultdict(list)
        for account, status in pairs:
            grouped[account].append(status)
        return dict(grouped)

    assert per_account(changes) == per_account(want.status_changes)  # same changes, same order per account
    for account, summary in want.account_rows().items():
        state = states[account]
        assert status_of(state) == summary["status"]
        assert money(state.cash_balance) == summary["cash_balance"]
        assert money(state.debt) == summary["debt"]
        assert (format_ts(state.last_settled_hour) if state.last_settled_hour is not None else None) == summary["last_settled_hour"]
        assert [(v.voucher_id, money(v.remaining)) for v in state.vouchers.values()] == [
            (v["voucher_id"], v["remaining"]) for v in summary["vouchers"]
        ]
    assert any(kind == "arrears" for _, kind in changes) and any(r["kind"] == "adjustment" for r in settlements)
