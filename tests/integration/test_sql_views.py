"""`billing sql` and the user-facing views on the real stack, while `billing up` runs.

Every example query of docs/sql.md runs as written (its SQL blocks parsed out of the page) and
its figures are checked against what `billing bills|account|rejected|settlements|rebill` print.
A rebill with a catalog that prices xingchen-plus-v2 from an earlier date runs first, so the
rebill examples have an effect to show and the rejections show their current reasons.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest

from pipeline.demo.workload import generate, write_jsonl
from tests.integration.stack import Stack, assert_hour_totals_equal_bills
from tests.integration.test_pipeline import accounts_of
from tests.oracle import expected

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "sql.md"
CATALOG = ROOT / "schemas" / "catalog.json"
WHOLE_RANGE = ("2024-01-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00")
Row = dict[str, Any]


def doc_examples() -> dict[str, str]:
    """name -> SQL of every ```sql block of docs/sql.md (named by its `-- example: NAME` line)."""
    examples = {}
    for block in re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        name = re.search(r"-- example: ([\w-]+)", block)
        assert name, f"an SQL example in docs/sql.md without a `-- example: NAME` line:\n{block}"
        assert name.group(1) not in examples, f"two examples named {name.group(1)}"
        examples[name.group(1)] = block
    return examples


def sql(stack: Stack, query: str, params: dict[str, str] | None = None, check: bool = True) -> list[Row]:
    args = ["sql", query, "--format", "json", "--max-rows", "100000"]
    for name in sorted(set(re.findall(r"\{(\w+):", query))):
        args += ["--param", f"{name}={(params or {})[name]}"]
    out = stack.cli(*args, check=check).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def plus_v2_earlier_catalog(tmp_path: Path) -> Path:
    data = json.loads(CATALOG.read_text())
    data["version"] = "2024-09-18.1-plus-v2-earlier"
    data["models"]["xingchen-plus-v2"]["prices"].insert(0, {"from": "2024-01-01", "input_per_1k": "0.004", "output_per_1k": "0.012"})
    path = tmp_path / "catalog-plus-v2-earlier.json"
    path.write_text(json.dumps(data))
    return path


@dataclass
class Loaded:
    lines: list[str]
    accounts: set[str]
    catalog: Path
    rebill_diffs: list[Row]
    before_rebill: list[Row]  # `billing rejected` before the rebill


@pytest.fixture(scope="module")
def loaded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    tmp = tmp_path_factory.mktemp("sqlviews")
    lines = generate(6000, seed=1919, accounts=8)
    path = tmp / "workload.jsonl"
    write_jsonl(path, lines)
    stack.publish(path)
    stack.wait()
    before = stack.rejected()
    catalog = plus_v2_earlier_catalog(tmp)
    accounts = accounts_of(lines)
    diffs = []
    for account in sorted(accounts):  # this workload's accounts only: the session's stack has others
        out = stack.cli(
            "rebill", "--from", WHOLE_RANGE[0], "--to", WHOLE_RANGE[1], "--catalog", str(catalog), "--account", account, "--format", "json"
        ).stdout
        diffs += [json.loads(x) for x in out.splitlines() if x.strip()]
    return Loaded(lines, accounts, catalog, diffs, before)


def test_rejections_show_the_reason_of_the_catalog_now_in_force(stack: Stack, loaded: Loaded) -> None:
    """Issue 19 item 6: after the rebill, each record still rejected shows the new catalog's reason."""
    fresh = expected(loaded.lines, catalog_path=loaded.catalog)
    want = {
        (acc, event_id): reason
        for acc, event_id, reason in fresh.rejections
        if event_id and reason not in ("conflicting_duplicate", "invalid_schema")
    }
    was_unpriced = {
        (r["account_id"], r["event_id"])
        for r in loaded.before_rebill
        if r["account_id"] in loaded.accounts
        and r["reason"] == "no_price_in_force"
        and isinstance(r["record"], dict)
        and r["record"].get("model") == "xingchen-plus-v2"
    }
    # (an event_id can also name an invalid_schema record or a conflicting duplicate: those keep their reasons)
    now = {
        (r["account_id"], r["event_id"]): r["reason"]
        for r in stack.rejected()
        if r["account_id"] in loaded.accounts and r["reason"] not in ("conflicting_duplicate", "invalid_schema")
    }
    changed = {k: now[k] for k in was_unpriced if k in now}
    # the workload has such records: the new catalog prices them, and then finds other faults
    assert changed and set(changed.values()) - {"no_price_in_force"}, changed
    for key, reason in changed.items():
        assert reason == want[key], f"{key}: listed as {reason}, the catalog in force says {want[key]}"
    assert {k for k in was_unpriced if k not in now} == {k for k in was_unpriced if k not in want}  # billed now: not listed
    listed_usage = {k: v for k, v in now.items() if k[1]}
    assert listed_usage == {k: v for k, v in want.items() if k in listed_usage}
    # the view says the same as the CLI, and keeps the first reason beside the current one
    view = sql(stack, "SELECT account_id, event_id, reason, first_reason FROM rejected_records WHERE event_id != ''")
    by_key = {(r["account_id"], r["event_id"]): r for r in view if r["reason"] not in ("conflicting_duplicate", "invalid_schema")}
    for key, reason in changed.items():
        assert by_key[key]["reason"] == reason and by_key[key]["first_reason"] == "no_price_in_force"


# ---- every example of docs/sql.md against the CLI ------------------------------------------------


def cli_bills(stack: Stack, *args: str) -> list[Row]:
    return stack.bills(*args)


def money(value: Any) -> Decimal:
    return Decimal(str(value))


def check_month_per_account(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0])
    for b in ctx["bills"]:
        if b["hour"].startswith(ctx["month"][:7]):
            want[b["account_id"]][0] += money(b["amount"])
            want[b["account_id"]][1] += 0 if b["item"].startswith("plugin:") else b["requests"]
    got = {r["account_id"]: [money(r["amount"]), r["calls"]] for r in rows}
    assert got == dict(want)


def check_statement(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for b in ctx["bills"]:
        if b["account_id"] == ctx["account"] and b["hour"].startswith(ctx["month"][:7]):
            want[(b["item"], b["api_key_id"])] += money(b["amount"])
    assert {(r["item"], r["api_key_id"]): money(r["amount"]) for r in rows} == dict(want)


def _by_day(ctx: Row, plugins: bool) -> dict[tuple[str, str], list[Any]]:
    want: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for b in ctx["bills"]:
        if b["item"].startswith("plugin:") == plugins:
            name = b["item"][len("plugin:") :] if plugins else b["item"]
            want[(b["hour"][:10], name)][0] += b["quantity"] if plugins else b["requests"]
            want[(b["hour"][:10], name)][1] += money(b["amount"])
    return dict(want)


def check_revenue_per_model_per_day(stack: Stack, rows: list[Row], ctx: Row) -> None:
    assert {(r["day"], r["model"]): [r["calls"], money(r["revenue"])] for r in rows} == _by_day(ctx, plugins=False)


def check_revenue_per_hour(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0, set()])
    for b in ctx["bills"]:
        w = want[b["hour"]]
        w[0] += money(b["amount"])
        w[1] += 0 if b["item"].startswith("plugin:") else b["requests"]
        w[2] += b["input_tokens"] + b["output_tokens"]
        w[3].add(b["account_id"])
    assert {r["hour"]: [money(r["revenue"]), r["calls"], r["tokens"], r["accounts"]] for r in rows} == {
        h: [w[0], w[1], w[2], len(w[3])] for h, w in want.items()
    }
    assert_hour_totals_equal_bills(stack.json_lines)  # and row for row, after the fixture's rebills


def check_plugins_per_day(stack: Stack, rows: list[Row], ctx: Row) -> None:
    assert {(r["day"], r["plugin"]): [r["units"], money(r["revenue"])] for r in rows} == _by_day(ctx, plugins=True)


def check_free_quota(stack: Stack, rows: list[Row], ctx: Row) -> None:
    got = {r["account_id"]: r["free_tokens_left"] for r in rows}
    for acc, summary in ctx["summaries"].items():
        assert got[acc] == summary["free_tokens_left"], acc


def check_arrears(stack: Stack, rows: list[Row], ctx: Row) -> None:
    got = {r["account_id"]: money(r["debt"]) for r in rows if r["account_id"] in ctx["summaries"]}
    want = {a: money(s["debt"]) for a, s in ctx["summaries"].items() if s["status"] == "arrears"}
    assert got == want
    assert all(r["status_since"] for r in rows)


def check_vouchers(stack: Stack, rows: list[Row], ctx: Row) -> None:
    summary = ctx["summaries"][ctx["voucher_account"]]
    assert rows and all(money(r["cash_balance"]) == money(summary["cash_balance"]) for r in rows)
    assert sorted((r["voucher_id"], money(r["remaining"]), r["expires_at"]) for r in rows) == sorted(
        (v["voucher_id"], money(v["remaining"]), v["expires_at"]) for v in summary["vouchers"]
    )


def check_calls_per_key_per_hour(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for b in ctx["bills"]:
        if b["account_id"] == ctx["account"] and not b["item"].startswith("plugin:"):
            w = want[(b["hour"], b["api_key_id"])]
            w[0] += b["requests"]
            w[1] += b["input_tokens"] + b["output_tokens"]
            w[2] += money(b["amount"])
    assert {(r["hour"], r["api_key_id"]): [r["calls"], r["tokens"], money(r["model_amount"])] for r in rows} == dict(want)


def check_lines_in_range(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want = cli_bills(stack, "--account", ctx["account"], "--from", ctx["from_rfc"], "--to", ctx["to_rfc"])
    assert want, "the range has lines"
    assert [{**r, "amount": money(r["amount"])} for r in rows] == [
        {k: (money(v) if k == "amount" else v) for k, v in b.items() if k != "account_id"} for b in want
    ]


def check_rejections_by_reason(stack: Stack, rows: list[Row], ctx: Row) -> None:
    assert {r["reason"]: r["records"] for r in rows} == dict(Counter(r["reason"] for r in stack.rejected()))


def check_violations_per_account(stack: Stack, rows: list[Row], ctx: Row) -> None:
    internal = sql(stack, "SELECT account_id, limit_name, count() AS n FROM rate_violations FINAL GROUP BY account_id, limit_name")
    assert rows and {(r["account_id"], r["limit_name"]): r["violations"] for r in rows} == {
        (r["account_id"], r["limit_name"]): r["n"] for r in internal
    }
    naive = sql(stack, "SELECT count() AS n FROM rate_violations")[0]["n"]
    assert sum(r["violations"] for r in rows) <= naive


def check_settlements(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want = stack.json_lines("settlements", "--account", ctx["account"])
    fields = ("hour", "kind", "amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after")
    assert rows and [[r[f] for f in fields] for r in rows] == [[w[f] for f in fields] for w in want]


def check_rebill_effect(stack: Stack, rows: list[Row], ctx: Row) -> None:
    want: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for d in ctx["rebill_diffs"]:
        want[d["account_id"]][0] += 1
        want[d["account_id"]][1] += money(d["delta"])
    got = {
        r["account_id"]: [r["hours_changed"], money(r["delta"])]
        for r in rows
        if r["catalog"] == "2024-09-18.1-plus-v2-earlier" and r["account_id"] in ctx["summaries"]
    }
    assert want and got == dict(want)


def check_keys(stack: Stack, rows: list[Row], ctx: Row) -> None:
    keys = ctx["summaries"][ctx["account"]]["keys"]
    assert {r["api_key_id"]: (r["revoked_at"], r["key_state"]) for r in rows} == {
        k: (v["revoked_at"], "revoked" if v["revoked_at"] else "active") for k, v in keys.items()
    }


CHECKS: dict[str, Callable[[Stack, list[Row], Row], None]] = {
    "month-per-account": check_month_per_account,
    "statement": check_statement,
    "revenue-per-model-per-day": check_revenue_per_model_per_day,
    "plugins-per-day": check_plugins_per_day,
    "revenue-per-hour": check_revenue_per_hour,
    "free-quota": check_free_quota,
    "arrears": check_arrears,
    "vouchers": check_vouchers,
    "calls-per-key-per-hour": check_calls_per_key_per_hour,
    "lines-in-range": check_lines_in_range,
    "rejections-by-reason": check_rejections_by_reason,
    "violations-per-account": check_violations_per_account,
    "settlements": check_settlements,
    "rebill-effect": check_rebill_effect,
    "keys": check_keys,
}


def test_every_doc_example_has_a_check() -> None:
    examples = doc_examples()
    assert len(examples) >= 12
    assert set(examples) == set(CHECKS), "each example of docs/sql.md is checked against the CLI here"


def test_doc_examples_equal_the_cli(stack: Stack, loaded: Loaded) -> None:
    bills = stack.bills()
    summaries = {a: json.loads(stack.cli("account", a, "--format", "json").stdout) for a in sorted(loaded.accounts)}
    mine = [b for b in bills if b["account_id"] in loaded.accounts]
    # the account the per-account examples use: one with vouchers, settlements and lines in September
    account = max(loaded.accounts, key=lambda a: (bool(summaries[a]["vouchers"]), sum(b["account_id"] == a for b in mine)))
    hours = sorted({b["hour"] for b in mine if b["account_id"] == account})
    month = hours[-1][:7] + "-01"
    ctx = {
        "bills": bills,
        "summaries": summaries,
        "account": account,
        "voucher_account": account,
        "month": month,
        "from_rfc": hours[-4],
        "to_rfc": hours[-1],
        "rebill_diffs": loaded.rebill_diffs,
    }
    params = {"account": account, "month": month, "from": hours[-4][:19].replace("T", " "), "to": hours[-1][:19].replace("T", " ")}
    assert summaries[account]["vouchers"], "the workload gives some account vouchers"
    for name, query in doc_examples().items():
        rows = sql(stack, query, params)
        CHECKS[name](stack, rows, ctx)


# ---- billing sql: read-only, limits, formats --------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO bill_lines (account_id) VALUES ('x')",
        "ALTER TABLE bill_lines DELETE WHERE 1",
        "DROP TABLE bill_lines",
        "CREATE TABLE evil (a Int8) ENGINE = Memory",
        "SYSTEM FLUSH LOGS",
        "SELECT 1; DROP TABLE bill_lines",
        "SET readonly = 0",
        "OPTIMIZE TABLE bill_lines FINAL",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT 1 INTO OUTFILE '/tmp/billing-sql-outfile'",
    ],
)
def test_sql_refuses_what_is_not_a_read(stack: Stack, statement: str) -> None:
    result = stack.cli("sql", statement, check=False)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith("billing: ") and "\n" not in line
    assert "read-only" in line or "one statement" in line or "Syntax error" in line, line


def test_worker_still_writes_after_refused_and_limited_sql(stack: Stack, tmp_path: Path) -> None:
    """The limits ride in the statement, not in the session: the embedded driver's SET/restore of
    readonly=1 would have left the worker's engine unable to write (seen before the fix)."""
    stack.cli("sql", "SELECT count() FROM hourly_bills", "--max-rows", "1", "--timeout", "5")
    assert stack.cli("sql", "INSERT INTO barriers VALUES ('x', 0, now())", check=False).returncode == 2
    record = {"type": "credit.recharge", "account_id": "sql-after-refusal", "timestamp": "2024-09-18T05:00:00+08:00", "amount": "7"}
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    stack.publish(path)
    stack.wait(timeout=60)
    assert json.loads(stack.cli("account", "sql-after-refusal", "--format", "json").stdout)["cash_balance"] == "7.000000"


def test_sql_formats_limits_params_and_stdin(stack: Stack, loaded: Loaded) -> None:
    account = sorted(loaded.accounts)[0]
    query = "SELECT hour, item, amount FROM hourly_bills WHERE account_id = {a:String} ORDER BY hour, api_key_id, item"
    full = stack.cli("sql", query, "--param", f"a={account}", "--format", "json").stdout.splitlines()
    assert len(full) > 3
    cut = stack.cli("sql", query, "--param", f"a={account}", "--format", "json", "--max-rows", "3")
    assert cut.stdout.splitlines() == full[:3] and "result cut at 3 rows" in cut.stderr
    csv_out = stack.cli("sql", "-", "--param", f"a={account}", "--format", "csv", input_bytes=query.encode()).stdout.splitlines()
    assert csv_out[0] == "hour,item,amount" and len(csv_out) == len(full) + 1
    table = stack.cli("sql", "SELECT 1 AS one, 'x' AS two").stdout.splitlines()
    assert table[0].split() == ["one", "two"] and table[1].split() == ["1", "x"]
    slow = stack.cli("sql", "SELECT count() FROM numbers(100000000000)", "--timeout", "1", check=False)
    assert slow.returncode == 2 and "time limit" in slow.stderr
    bad = stack.cli("sql", "SELECT {a:UInt8}", "--param", "a=notanumber", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("billing: ")


def test_sql_opens_the_engine_itself_when_nothing_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "idle"
    run = [sys.executable, "-m", "pipeline"]
    subprocess.run([*run, "migrate", "--data-dir", str(data_dir)], check=True, capture_output=True)
    out = subprocess.run(
        [*run, "sql", "SELECT count() AS n FROM hourly_bills", "--format", "json", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out) == {"n": 0}


def test_billing_console_serves_the_pages_against_clickhouse_itself(tmp_path: Path) -> None:
    """`billing console` (a deployment's console, no worker in the process): pages, endpoints, no health."""
    import signal
    import urllib.request

    data_dir = tmp_path / "idle"
    run = [sys.executable, "-m", "pipeline"]
    subprocess.run([*run, "migrate", "--data-dir", str(data_dir)], check=True, capture_output=True)
    proc = subprocess.Popen([*run, "console", "--port", "0", "--data-dir", str(data_dir)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"(http://\S+)/console", line)
        assert match, line
        base = match.group(1)
        with urllib.request.urlopen(base + "/console", timeout=30) as response:
            assert 'data-page="operator"' in response.read().decode()
        with urllib.request.urlopen(base + "/console/static/echarts.min.js", timeout=30) as response:
            assert response.status == 200 and b"echarts" in response.read(2000)
        with urllib.request.urlopen(base + "/api/console/health", timeout=30) as response:
            assert json.loads(response.read())["available"] is False
        with urllib.request.urlopen(base + "/api/console/accounts", timeout=30) as response:
            assert json.loads(response.read()) == []
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def listed_usage_reasons(stack: Stack, account: str) -> dict[str, str]:
    return {
        r["event_id"]: r["reason"]
        for r in stack.rejected("--account", account)
        if r["event_id"] and r["reason"] not in ("conflicting_duplicate", "invalid_schema")
    }


def fresh_usage_reasons(lines: list[str], catalog: Path, account: str) -> dict[str, str]:
    return {
        event_id: reason
        for acc, event_id, reason in expected(lines, catalog_path=catalog).rejections
        if acc == account and event_id and reason not in ("conflicting_duplicate", "invalid_schema")
    }


def test_calls_a_rebill_rejects_are_listed_and_a_later_rebill_bills_them_again(stack: Stack, loaded: Loaded, tmp_path: Path) -> None:
    """A call the stream billed and a rebill's catalog rejects is listed (with the record, no first
    reason); a later rebill that prices it again takes it off the list."""
    account = max(loaded.accounts, key=lambda a: sum(f'"{a}"' in x and '"xingchen-max"' in x for x in loaded.lines))
    data = json.loads(loaded.catalog.read_text())
    data["version"] = "2024-09-18.1-max-later"
    data["models"]["xingchen-max"]["prices"] = [{"from": "2030-01-01", "input_per_1k": "0.04", "output_per_1k": "0.12"}]
    late = tmp_path / "catalog-max-later.json"
    late.write_text(json.dumps(data))
    before = listed_usage_reasons(stack, account)
    for _ in range(2):  # the second run changes no line; the calls stay listed
        stack.cli("rebill", "--from", WHOLE_RANGE[0], "--to", WHOLE_RANGE[1], "--catalog", str(late), "--account", account)
    after = listed_usage_reasons(stack, account)
    assert after == fresh_usage_reasons(loaded.lines, late, account)
    newly = set(after) - set(before)
    assert newly and {after[e] for e in newly} == {"no_price_in_force"}
    view = {
        r["event_id"]: r
        for r in sql(
            stack, "SELECT event_id, first_reason, record, event_ts FROM rejected_records WHERE account_id = {a:String}", {"a": account}
        )
    }
    for event_id in newly:
        assert view[event_id]["first_reason"] == "" and json.loads(view[event_id]["record"])["event_id"] == event_id
        assert view[event_id]["event_ts"].endswith("+08:00")

    stack.cli("rebill", "--from", WHOLE_RANGE[0], "--to", WHOLE_RANGE[1], "--catalog", str(loaded.catalog), "--account", account)
    assert listed_usage_reasons(stack, account) == fresh_usage_reasons(loaded.lines, loaded.catalog, account) == before


def test_console_and_sql_beyond_loopback_need_the_api_token(tmp_path: Path) -> None:
    """Issue 19 item 5: served beyond loopback, every console page, console endpoint and SQL read
    needs BILLING_API_TOKEN (as a Bearer header, or once as ?token= which leaves a cookie); the
    static assets stay open; without a token such a console does not start at all."""
    import os
    import signal
    import urllib.error
    import urllib.request

    data_dir = tmp_path / "idle"
    run = [sys.executable, "-m", "pipeline"]
    subprocess.run([*run, "migrate", "--data-dir", str(data_dir)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "BILLING_API_TOKEN"}
    refused = subprocess.run(
        [*run, "console", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode != 0 and "BILLING_API_TOKEN" in refused.stderr
    token = "console-token-19"
    proc = subprocess.Popen(
        [*run, "console", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(data_dir)],
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "BILLING_API_TOKEN": token},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"http://[^:/\s]+:(\d+)/console", line)
        assert match, line
        base = f"http://127.0.0.1:{match.group(1)}"  # loopback reaches it too, and is refused like any other address

        def status(path: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, str]:
            request = urllib.request.Request(base + path, data=data, headers=headers or {}, method="POST" if data else "GET")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.headers.get("Set-Cookie") or ""
            except urllib.error.HTTPError as refusal:
                return refusal.code, ""

        query = json.dumps({"sql": "SELECT count() FROM hourly_account_totals"}).encode()
        bearer = {"Authorization": f"Bearer {token}"}
        for path in (
            "/console",
            "/console/account/a",
            "/api/console/overview",
            "/api/console/accounts",
            "/api/console/accounts/a/usage",
            "/api/console/health",
        ):
            assert status(path)[0] == 401, path
            assert status(path, {"Authorization": "Bearer wrong"})[0] == 401, path
            assert status(path, bearer)[0] in (200, 404), path  # 404: no such account, once let in
        assert status("/api/sql", {"Content-Type": "application/json"}, query)[0] == 401
        assert status("/api/sql", {"Content-Type": "application/json", **bearer}, query)[0] == 200
        assert status("/console/static/echarts.min.js")[0] == 200  # no data in the assets
        code, cookie = status(f"/console?token={token}")
        assert code == 200 and cookie.startswith("billing_token=") and "HttpOnly" in cookie
        assert status("/api/console/accounts", {"Cookie": cookie.split(";")[0]})[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
