"""What `billing rebill` reports and audits when the worker refused some accounts' lines as stale."""

from __future__ import annotations

import json

from pipeline.stream.rebill import refused_accounts, without_accounts


def rejection(account: str, run_id: str) -> dict:
    record = {"type": "rebill.lines", "account_id": account, "run_id": run_id, "lines": []}
    return {"account_id": account, "reason": "stale_rebill", "record": json.dumps(record)}


def test_only_this_runs_refusals_count() -> None:
    rows = [rejection("a", "run-1"), rejection("b", "run-0"), {"account_id": "c", "record": "not json"}]
    assert refused_accounts(rows, "run-1") == {"a"}


def test_audit_keeps_what_was_applied_only() -> None:
    audit = {
        "lines_changed": 5,
        "diffs": [{"account_id": "a", "hour": "h1"}, {"account_id": "b", "hour": "h1"}],
        "now_billed": [["a", "ev-1"], ["b", "ev-2"]],
    }
    records = [json.dumps({"account_id": "a", "lines": [{}, {}]}), json.dumps({"account_id": "b", "lines": [{}, {}, {}]})]
    kept = without_accounts(audit, {"a"}, records)
    assert kept["lines_changed"] == 3
    assert kept["diffs"] == [{"account_id": "b", "hour": "h1"}]
    assert kept["now_billed"] == [["b", "ev-2"]]  # a's calls stay rejected until its rebill applies
    assert kept["refused_accounts"] == ["a"]
    assert without_accounts(audit, set(), records) is audit
