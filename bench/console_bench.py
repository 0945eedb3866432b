"""How fast the console's pages answer with 1,000,000 bill lines over 10,000 accounts.

    python -m bench.console_bench [--lines 1000000] [--accounts 10000] [--runs 5] [--dir DIR]

Fills a fresh embedded ClickHouse (generated inside ClickHouse with INSERT ... SELECT: 25 hours x
4 items per account, plus a second revision of every tenth line so that FINAL has work, the
account-hour totals of bill_hour_totals with a second revision where a line changed, and
settlements, rejections, violations and account states to match), then times each data endpoint
of each page (the functions behind /api/console/..., JSON encoding included) and prints the
median and the slowest of --runs runs. Target: under 300 ms each (issue 19). A benchmark figure,
not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.core.state import AccountState
from pipeline.serve.console import data
from pipeline.store.chclient import DDL_DIR, connect, migrate
from pipeline.store.migrations import discover

BASE_HOUR = "2024-09-18 00:00:00"
# a worker's /metrics for the health panel (parsed by the endpoint, no ClickHouse read): 16 partitions
METRICS = (
    "".join(f'billing_partition_lag{{partition="{p}"}} {p}\nbilling_partition_offset{{partition="{p}"}} {p * 1000}\n' for p in range(16))
    + "billing_records_total 1000000\n"
)
ITEMS = ("xingchen-lite", "xingchen-plus", "xingchen-max", "plugin:text_to_image")


def fill(client: Any, lines: int, accounts: int) -> None:
    per_account = lines // accounts
    acc = f"concat('acct-', leftPad(toString(number % {accounts}), 6, '0'))"
    k = f"intDiv(number, {accounts})"
    hour = f"toDateTime('{BASE_HOUR}', 'Asia/Shanghai') + intDiv({k}, 4) * 3600"
    item = f"arrayElement({list(ITEMS)}, {k} % 4 + 1)"
    plugin = f"{k} % 4 = 3"
    client.command(
        "INSERT INTO bill_lines SELECT "
        f"{acc}, {hour}, concat('sk-', toString(number % {accounts}), '-', toString({k} % 2)), {item}, "
        f"1 + number % 7, if({plugin}, 0, 100 + number % 900), if({plugin}, 0, 50 + number % 400), 0, "
        f"if({plugin}, 0, 100 + number % 900), if({plugin}, 0, 50 + number % 400), if({plugin}, 1 + number % 3, 0), "
        "toDecimal64((number % 10000) / 1000, 6), 1, now64(3) "
        f"FROM numbers({per_account * accounts})"
    )
    totals = hour_totals_backfill()
    client.command(totals)  # the account-hours' totals, as the worker writes them with the lines
    client.command(  # a newer revision of every tenth line
        "INSERT INTO bill_lines SELECT account_id, hour, api_key_id, item, requests + 1, input_tokens, output_tokens, free_tokens, "
        "billed_input_tokens, billed_output_tokens, quantity, amount + toDecimal64(0.5, 6), 2, now64(3) "
        "FROM bill_lines WHERE cityHash64(account_id, hour, item) % 10 = 0"
    )
    # ...and a newer revision of the totals of each account-hour where a line changed (a third of
    # them, spread over every hour: FINAL has to merge across the whole range, as after a rebill)
    client.command(
        totals.replace(
            "FROM bill_lines FINAL",
            "FROM bill_lines FINAL WHERE (account_id, hour) IN (SELECT account_id, hour FROM bill_lines WHERE revision = 2)",
        )
    )
    hours = per_account // 4
    client.command(
        "INSERT INTO settlements SELECT "
        f"concat('acct-', leftPad(toString(number % {accounts}), 6, '0')), "
        f"toDateTime('{BASE_HOUR}', 'Asia/Shanghai') + intDiv(number, {accounts}) * 3600, 'regular', "
        "toDecimal64(1.5, 6), toDecimal64(0.5, 6), toDecimal64(1, 6), toDecimal64(0, 6), toDecimal64(0, 6), toDecimal64(100, 6), "
        f"intDiv(number, {accounts}) + 1, now64(3) FROM numbers({hours * accounts})"
    )
    client.command(
        "INSERT INTO rejections SELECT "
        f"concat('acct-', leftPad(toString(number % {accounts}), 6, '0')), concat('evt-r', toString(number)), "
        "concat('evt-r', toString(number)), 'usage', "
        "arrayElement(['no_price_in_force', 'invalid_api_key', 'input_limit_exceeded'], number % 3 + 1), 'detail', "
        f"toDateTime64('{BASE_HOUR}', 6, 'Asia/Shanghai') + (number % 90000), '{{}}', number, now64(3) "
        f"FROM numbers({accounts * 2})"
    )
    client.command(
        "INSERT INTO rate_violations SELECT "
        f"concat('acct-', leftPad(toString(number % {accounts}), 6, '0')), concat('evt-v', toString(number)), "
        f"toDateTime64('{BASE_HOUR}', 6, 'Asia/Shanghai') + (number % 90000), 'tpm', "
        f"toDateTime64('{BASE_HOUR}', 6, 'Asia/Shanghai') + intDiv(number % 90000, 60) * 60, 1500, 1000, number "
        f"FROM numbers({accounts * 5})"
    )
    states = []
    for i in range(accounts):
        state = AccountState(f"acct-{i:06d}")
        state.cash_balance = state.cash_balance + (i % 500)
        state.free_used = 1_000_000
        state.max_ts_us = 1_726_588_800_000_000 + 25 * 3_600_000_000
        if i % 10 == 0:
            state.debt = state.debt + 3
        states.append([state.account_id, 1, state.to_json().decode(), int(time.time() * 1000)])
    client.insert("account_state", states, column_names=["account_id", "seq", "state", "updated_at"])
    client.command(
        "INSERT INTO account_status SELECT "
        f"concat('acct-', leftPad(toString(number * 10), 6, '0')), 'arrears', toDecimal64(3, 6), toDecimal64(0, 6), "
        f"toDateTime64('{BASE_HOUR}', 6, 'Asia/Shanghai') + number, 1, now64(3) FROM numbers({accounts // 10})"
    )


def settle(client: Any, timeout_s: float = 120.0) -> None:
    """Wait until ClickHouse runs no merge (the fill's parts being merged would take the cores
    the timed queries need). Revisions in different parts stay different parts: FINAL still
    merges them at read time, as it does for the hours a worker is writing."""
    deadline = time.monotonic() + timeout_s
    while client.query("SELECT count() FROM system.merges").result_rows[0][0] and time.monotonic() < deadline:
        time.sleep(1)
    parts = client.query(
        "SELECT table, count(), sum(rows) FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table IN ('bill_lines', 'bill_hour_totals') GROUP BY table ORDER BY table"
    ).result_rows
    print("parts: " + ", ".join(f"{table} {n} ({rows:,} rows)" for table, n, rows in parts))


def hour_totals_backfill() -> str:
    """Migration 004's statement that fills bill_hour_totals from bill_lines: the bench fills
    the lines inside ClickHouse, not through the worker, and the totals the same way."""
    (migration,) = [m for m in discover(DDL_DIR) if m.name == "hour_totals"]
    (statement,) = [s for s in migration.statements if s.startswith("INSERT INTO bill_hour_totals")]
    assert "FROM bill_lines FINAL" in statement
    return statement


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        size = len(json.dumps(fn()))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", help="data directory (default: a fresh temporary one)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="console-bench-"))
    client = connect(f"chdb://{root / 'clickhouse'}")
    migrate(client)
    (existing,) = client.query("SELECT count() FROM bill_lines").result_rows[0]
    if not existing:
        started = time.perf_counter()
        fill(client, args.lines, args.accounts)
        print(f"filled in {time.perf_counter() - started:.1f}s")
    settle(client)
    (rows, current, accounts) = client.query(
        "SELECT (SELECT count() FROM bill_lines), count(), uniqExact(account_id) FROM hourly_bills"
    ).result_rows[0]
    print(f"bill_lines rows {rows:,} (current lines {current:,}) over {accounts:,} accounts; data in {root}")
    account = "acct-004242"
    limits = (1, 60, 1000)
    cache = data.OverviewCache()
    span = ("2024-09-18T06:00:00+08:00", "2024-09-18T18:00:00+08:00")  # a range chosen on the page: 12 of the 25 hours
    endpoints: list[tuple[str, Callable[[], Any]]] = [
        ("operator  /api/console/overview (computed)", lambda: data.overview(client, None, None)),
        ("operator  /api/console/overview?from=&to= (12 h, computed)", lambda: data.overview(client, *span)),
        ("operator  /api/console/overview (cached, no write since)", lambda: cache.get(client, None, None)),
        ("operator  /api/console/accounts", lambda: data.accounts(client, None)),
        ("operator  /api/console/accounts?prefix=acct-0042", lambda: data.accounts(client, "acct-0042")),
        ("operator  /api/console/health", lambda: data.pipeline_health({"stats": {"batches": 3}, "batch_seconds": 0.3}, METRICS)),
        ("account   /api/console/accounts/A", lambda: data.account(client, account, 1_000_000, limits)),
        ("account   /api/console/accounts/A/usage?by=model", lambda: data.usage(client, account, None, None, "model")),
        ("account   /api/console/accounts/A/usage?by=key", lambda: data.usage(client, account, None, None, "key")),
        ("account   /api/console/accounts/A/usage?by=plugin", lambda: data.usage(client, account, None, None, "plugin")),
        ("account   /api/console/accounts/A/usage?by=model&from=&to=", lambda: data.usage(client, account, *span, "model")),
        ("account   /api/console/accounts/A/details", lambda: data.details(client, account, None, None)),
        ("account   /api/console/accounts/A/details?from=&to=", lambda: data.details(client, account, *span)),
        ("statement /api/console/accounts/A/statement", lambda: data.statement(client, account, "2024-09")),
        ("statement /api/console/accounts/A/statement.csv", lambda: data.statement_csv(data.statement(client, account, "2024-09"))),
    ]
    print(f"{'endpoint':62} {'median ms':>10} {'max ms':>8} {'bytes':>9}")
    for name, fn in endpoints:
        median, worst, size = timed(fn, args.runs)
        print(f"{name:62} {median:10.1f} {worst:8.1f} {size:9,}")


if __name__ == "__main__":
    main()
