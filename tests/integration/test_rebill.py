"""Rebill a range with a corrected catalog: in-range lines equal a fresh run, the rest stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.demo.workload import generate, write_jsonl
from tests.integration.stack import Stack, assert_hour_totals_equal_bills, bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.oracle import expected

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[2] / "schemas" / "catalog.json"
START, END = "2024-06-06T23:00:00+08:00", "2024-06-07T03:00:00+08:00"


def corrected_catalog(tmp_path: Path) -> Path:
    data = json.loads(CATALOG.read_text())
    data["version"] = "2024-09-18.2-test"
    # a price correction for one model from the day the range starts...
    data["models"]["xingchen-max"]["prices"].append({"from": "2024-06-07", "input_per_1k": "0.03", "output_per_1k": "0.09"})
    data["models"]["xingchen-max"]["prices"] = data["models"]["xingchen-max"]["prices"][1:]
    # ...and an older price version that now covers calls rejected as no_price_in_force
    data["models"]["xingchen-base"]["prices"].insert(0, {"from": "2024-01-01", "input_per_1k": "0.008", "output_per_1k": "0.02"})
    path = tmp_path / "catalog-corrected.json"
    path.write_text(json.dumps(data))
    return path


def in_range(key: tuple[str, str, str, str]) -> bool:
    return START <= key[1] < END  # same offset and format: string order is time order


def test_rebill_range_with_corrected_catalog(stack: Stack, tmp_path: Path) -> None:
    lines = generate(5000, seed=41, start="2024-06-06T22:00:00+08:00")
    path = tmp_path / "workload.jsonl"
    write_jsonl(path, lines)
    stack.publish(path)
    stack.wait()
    accounts = accounts_of(lines)
    before = bills_by_key(stack.bills(), accounts)
    catalog = corrected_catalog(tmp_path)
    base_unpriced = {
        (r["account_id"], r["event_id"])
        for r in stack.rejected()
        if r["reason"] == "no_price_in_force"
        and r["record"]["model"] == "xingchen-base"
        and START <= r["timestamp"] < END
        and r["account_id"] in accounts
    }

    dry = stack.cli("rebill", "--from", START, "--to", END, "--catalog", str(catalog), "--dry-run", "--format", "json")
    dry_diff = [json.loads(x) for x in dry.stdout.splitlines()]
    assert dry_diff and any(d["delta"] != "0.000000" for d in dry_diff)
    assert stack.bills() and bills_by_key(stack.bills(), accounts) == before  # a dry run writes nothing

    real = stack.cli("rebill", "--from", START, "--to", END, "--catalog", str(catalog), "--format", "json")
    assert [json.loads(x) for x in real.stdout.splitlines()] == dry_diff

    after = bills_by_key(stack.bills(), accounts)
    fresh_run = expected(lines, catalog_path=catalog)
    fresh = fresh_run.bills
    want_in_range = {k: v for k, v in fresh.items() if in_range(k)}
    got_in_range = {k: v for k, v in after.items() if in_range(k) and v["requests"] > 0}
    assert got_in_range == want_in_range
    assert {k: v for k, v in after.items() if not in_range(k)} == {k: v for k, v in before.items() if not in_range(k)}
    assert_hour_totals_equal_bills(stack.json_lines)  # what the console's overview sums, after the rebill's new revisions
    # rejected under the old catalog, billed now: no longer listed as rejected
    still_rejected = {(r["account_id"], r["event_id"]) for r in stack.rejected()}
    rejected_fresh = {(acc, event_id) for acc, event_id, _ in fresh_run.rejections}
    resolved = base_unpriced - rejected_fresh
    assert resolved and not (resolved & still_rejected)
    assert base_unpriced & rejected_fresh <= still_rejected  # rejected for another reason: still listed

    again = stack.cli("rebill", "--from", START, "--to", END, "--catalog", str(catalog), "--format", "json")
    assert again.stdout.strip() == ""  # nothing differs any more
    assert "0 lines change" in again.stderr
    assert bills_by_key(stack.bills(), accounts) == after
