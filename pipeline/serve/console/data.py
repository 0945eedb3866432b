"""What the console's pages show: plain functions over a clickhouse-connect client.

Every user value is a bound parameter. They read the user-facing views of
schemas/clickhouse/002_user_views.sql (current values, no revision twice) and, for the figures
the CLI also prints (bill lines, account summary, settlements, rejections), the very functions
of `pipeline.store.queries`, so the console and `billing bills|account` cannot disagree. What sums over
every account (the operator's overview) reads bill_hour_totals (004_hour_totals.sql): one row per
account-hour, kept by the worker equal to the account-hour's lines, sorted by hour; a range of
1,000,000 lines is then read as its 250,000 account-hours instead (bench/console_bench.py).
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.core.state import AccountState
from pipeline.core.timestamps import US_PER_HOUR, US_PER_SECOND, format_ts, parse_ts
from pipeline.store import queries
from pipeline.store.sqlquery import jsonable

Row = dict[str, Any]
DEFAULT_HOURS = 48  # a range not given: the last 48 hours that have bills
MAX_RANGE_HOURS = 24 * 93  # about a quarter of hourly points per chart at most
MAX_ROWS = 5000  # rows per table on a page; more says "cut"
TOP_ACCOUNTS = 20  # the operator page's top accounts by amount
GROUPINGS = ("model", "key", "plugin")
ZERO = Decimal(0)


def _rows(client: Client, sql: str, params: dict[str, Any]) -> list[Row]:
    result = client.query(sql, parameters=params)
    return [{c: jsonable(v) for c, v in zip(result.column_names, row)} for row in result.result_rows]


def time_range(client: Client, start: str | None, end: str | None, account: str | None = None) -> tuple[int, int]:
    """[start, end) in microseconds, on whole hours. Missing ends: the last DEFAULT_HOURS hours
    with bills (of the account, or of anyone), so a page opens on data, whatever year it is."""
    if start and end:
        s, e = parse_ts(start), parse_ts(end)
    else:
        e, first = _default_bounds(client, parse_ts(end) if end else None, account)
        s = parse_ts(start) if start else first
    s -= s % US_PER_HOUR  # hours are whole in every zone this product bills in (+08:00)
    e += -e % US_PER_HOUR
    if e <= s:
        raise ValueError("the range's end must be after its start")
    if e - s > MAX_RANGE_HOURS * US_PER_HOUR:
        raise ValueError(f"a range of at most {MAX_RANGE_HOURS} hours, please")
    return s, e


def _default_bounds(client: Client, end_us: int | None, account: str | None) -> tuple[int, int]:
    """The range's end (`end_us`, else the hour after the last with bills) and the first hour with
    bills in the DEFAULT_HOURS before it (that span's start when none): one query, so that a
    default range starts on data."""
    table = _hours_table(account)
    params: dict[str, Any] = {"back": DEFAULT_HOURS * US_PER_HOUR // US_PER_SECOND}
    where = ""
    if account:
        params["a"] = account
        where = " AND account_id = {a:String}"
    if end_us is None:
        last = f"(SELECT toUnixTimestamp(max(hour)) FROM {table} WHERE true{where}) + 3600"
    else:
        params["e"] = end_us // US_PER_SECOND
        last = "{e:Int64}"
    (end_s, first) = client.query(
        f"WITH {last} AS e SELECT e, toUnixTimestamp(min(hour)) FROM {table} "
        f"WHERE toUnixTimestamp(hour) >= e - {{back:Int64}} AND toUnixTimestamp(hour) < e{where}",
        parameters=params,
    ).result_rows[0]
    e = end_us if end_us is not None else end_s * US_PER_SECOND
    return e, max(e - DEFAULT_HOURS * US_PER_HOUR, (first or 0) * US_PER_SECOND)


def _hours_table(account: str | None) -> str:
    """Where the hours that have bills are looked up: an account's in bill_lines (sorted by
    account), every account's in bill_hour_totals (sorted by hour; a row per account-hour with
    lines, like bill_lines' rows, so the same hours)."""
    return "bill_lines" if account else "bill_hour_totals"


def _range_params(s: int, e: int) -> dict[str, Any]:
    return {"s": s // US_PER_SECOND, "e": e // US_PER_SECOND}


RANGE = "toUnixTimestamp(hour) >= {s:Int64} AND toUnixTimestamp(hour) < {e:Int64}"


def _hours(s: int, e: int) -> list[str]:
    return [format_ts(h) for h in range(s, e, US_PER_HOUR)]


def overview(client: Client, start: str | None, end: str | None) -> Row:
    """The operator's page: revenue and calls per hour, top accounts, arrears, rejections, rebills.

    The sums over every account come from bill_hour_totals in one FINAL pass over the range's
    account-hours (grouped per hour and per account at once, only the top accounts sent back);
    equal to summing the lines (the worker keeps it so, tests/integration check it after rebills
    and redeliveries)."""
    s, e = time_range(client, start, end)
    p = {**_range_params(s, e), "top": TOP_ACCOUNTS}
    hourly, top, accounts_in_range = {}, [], 0
    for r in _rows(
        client,
        (
            "SELECT hour, account_id, g, calls, tokens, amount, groups FROM ("
            "SELECT hour, account_id, grouping(hour, account_id) AS g, sum(calls) AS calls, "
            "sum(input_tokens + output_tokens) AS tokens, sum(amount) AS amount, count() OVER (PARTITION BY g) AS groups, "
            "row_number() OVER (PARTITION BY g ORDER BY amount DESC, account_id) AS place "
            f"FROM bill_hour_totals FINAL WHERE {RANGE} GROUP BY GROUPING SETS ((hour), (account_id))) "
            "WHERE g = 1 OR place <= {top:UInt32} ORDER BY g, place"
        ),
        p,
    ):
        if r["g"] == 1:  # grouped by hour (account_id aggregated away)
            hourly[r["hour"]] = r
        else:
            accounts_in_range = r["groups"]
            top.append({"account_id": r["account_id"], "amount": r["amount"], "calls": r["calls"], "tokens": r["tokens"]})
    hours = _hours(s, e)
    totals = {
        "calls": sum(r["calls"] for r in hourly.values()),
        "tokens": sum(r["tokens"] for r in hourly.values()),
        "amount": sum((Decimal(r["amount"]) for r in hourly.values()), ZERO),
        "accounts": accounts_in_range,
    }
    # the accounts in arrears and how many (the view's status is the account state's: debt > 0)
    arrears = _rows(
        client,
        (
            "SELECT account_id, debt, cash_balance, status_since, count() OVER () AS in_arrears FROM account_balances "
            "WHERE status = 'arrears' ORDER BY debt DESC, account_id LIMIT 100"
        ),
        {},
    )
    (all_accounts,) = client.query("SELECT uniqExact(account_id) FROM account_state").result_rows[0]
    reasons = _rows(client, "SELECT reason, count() AS records FROM rejected_records GROUP BY reason ORDER BY records DESC, reason", {})
    rebills = _rows(client, "SELECT * FROM rebills ORDER BY run_at DESC, run_id LIMIT 20", {})
    return {
        "from": format_ts(s),
        "to": format_ts(e),
        "hours": hours,
        "calls": [hourly[h]["calls"] if h in hourly else 0 for h in hours],
        "tokens": [hourly[h]["tokens"] if h in hourly else 0 for h in hours],
        "amount": [hourly[h]["amount"] if h in hourly else "0.000000" for h in hours],
        "totals": {**totals, "amount": _money(totals["amount"])},
        "top_accounts": top,
        "arrears": [{k: v for k, v in r.items() if k != "in_arrears"} for r in arrears],
        "accounts": all_accounts,
        "in_arrears": arrears[0]["in_arrears"] if arrears else 0,
        "rejections_by_reason": reasons,
        "rebills": rebills,
    }


# What the overview reads: any write to these changes a count or a latest time (OverviewCache).
OVERVIEW_SOURCES = (
    ("bill_hour_totals", "updated_at"),
    ("account_state", "updated_at"),
    ("account_status", "changed_at"),
    ("rejections", "rejected_at"),
    ("rejection_revisions", "revised_at"),
    ("rebill_runs", "run_at"),
)


class OverviewCache:
    """An overview is reused while nothing it reads has changed: every table it reads has the same
    row count and the same latest write time as when it was computed (one query over columns
    that ClickHouse keeps small; a rolled-back write changes the count). Computing it takes
    about 150 ms with 1,000,000 lines (bench/console_bench.py); this only spares repeated visits."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str | None, str | None], tuple[tuple[Any, ...], float, Row]] = {}

    @staticmethod
    def version(client: Client) -> tuple[Any, ...]:
        parts = ", ".join(f"(SELECT (count(), max({column})) FROM {table})" for table, column in OVERVIEW_SOURCES)
        return tuple(client.query(f"SELECT {parts}").result_rows[0])

    def get(self, client: Client, start: str | None, end: str | None) -> Row:
        import time

        version = self.version(client)
        cached = self.entries.get((start, end))
        if cached is not None and cached[0] == version:
            return cached[2]
        result = {**overview(client, start, end), "computed_at": time.time()}
        if len(self.entries) > 64:
            self.entries.clear()
        self.entries[(start, end)] = (version, result["computed_at"], result)
        return result


def accounts(client: Client, prefix: str | None, limit: int = 200) -> list[Row]:
    """Accounts with their status and balances, by id (a prefix narrows it)."""
    params: dict[str, Any] = {"limit": max(1, min(int(limit), 1000))}
    where = ""
    if prefix:
        params["p"] = prefix
        where = " WHERE startsWith(account_id, {p:String})"
    # the page of ids first: the view's balances are then computed for those accounts only. On a
    # cluster the subquery runs on each shard (distributed_product_mode='local', store/chcluster.py),
    # each giving its own first ids: the outer LIMIT keeps the page at `limit`
    return _rows(
        client,
        (
            "SELECT account_id, status, cash_balance, debt, voucher_balance, free_tokens_used, status_since, last_event_at "
            f"FROM account_balances WHERE account_id IN (SELECT DISTINCT account_id FROM account_state{where} "
            "ORDER BY account_id LIMIT {limit:UInt32}) ORDER BY account_id LIMIT {limit:UInt32}"
        ),
        params,
    )


def account(client: Client, account_id: str, free_quota: int, default_limits: tuple[int, int, int]) -> Row | None:
    """`billing account`'s summary plus what the page adds: key states, rate limits, status since."""
    row = queries.account(client, account_id, free_quota)
    if row is None:
        return None
    (state_json,) = client.query(
        "SELECT argMax(state, seq) FROM account_state WHERE account_id = {a:String} GROUP BY account_id",
        parameters={"a": account_id},
    ).result_rows[0]
    state = AccountState.from_json(state_json)
    clock = state.max_ts_us
    row["key_states"] = [
        {
            "api_key_id": k,
            "created_at": format_ts(v.created_us),
            "revoked_at": format_ts(v.revoked_us) if v.revoked_us else None,
            "state": "revoked" if v.revoked_us is not None and v.revoked_us <= clock else "active",
        }
        for k, v in sorted(state.keys.items())
    ]
    own = state.limits
    qps, qpm, tpm = (own.qps, own.qpm, own.tpm) if own is not None else default_limits
    row["limits"] = {"qps": qps, "qpm": qpm, "tpm": tpm, "source": "account" if own is not None else "catalog default"}
    since = _rows(client, "SELECT status_since FROM account_balances WHERE account_id = {a:String}", {"a": account_id})
    row["status_since"] = since[0]["status_since"] if since else None
    row["free_quota_tokens"] = free_quota
    return row


def usage(client: Client, account_id: str, start: str | None, end: str | None, by: str) -> Row:
    """Hourly calls, tokens and amount of one account by model, key or plugin, every hour of the range."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}")
    s, e = time_range(client, start, end, account_id)
    params = {**_range_params(s, e), "a": account_id}
    group, where, calls = {
        "model": ("item", "NOT is_plugin", "sum(requests)"),
        "key": ("api_key_id", "true", "sumIf(requests, NOT is_plugin)"),
        "plugin": ("item", "is_plugin", "sum(requests)"),
    }[by]
    # one pass over the account's lines of the range: the series' groups, and the range's totals
    # (every line: calls of the models, tokens and amount of all) as the empty grouping set
    rows = _rows(
        client,
        (
            f"SELECT hour, {group} AS grp, {where} AS in_series, grouping(hour, grp, in_series) AS g, {calls} AS calls, "
            "sumIf(requests, NOT is_plugin) AS api_calls, sum(input_tokens + output_tokens) AS tokens, sum(quantity) AS quantity, "
            f"sum(amount) AS amount FROM hourly_bills WHERE account_id = {{a:String}} AND {RANGE} "
            "GROUP BY GROUPING SETS ((hour, grp, in_series), ()) ORDER BY g, grp, hour"
        ),
        params,
    )
    hours = _hours(s, e)
    index = {h: i for i, h in enumerate(hours)}
    series: dict[str, Row] = {}
    totals: Row = {"calls": 0, "tokens": 0, "amount": "0"}
    for r in rows:
        if r["g"] != 0:  # the empty grouping set: the whole range
            totals = {"calls": r["api_calls"], "tokens": r["tokens"], "amount": r["amount"]}
            continue
        if not r["in_series"]:
            continue
        name = r["grp"] or "(none)"
        entry = series.setdefault(
            name, {"calls": [0] * len(hours), "tokens": [0] * len(hours), "quantity": [0] * len(hours), "amount": ["0.000000"] * len(hours)}
        )
        i = index[r["hour"]]
        for metric in ("calls", "tokens", "quantity"):
            entry[metric][i] = r[metric]
        entry["amount"][i] = r["amount"]
    return {
        "account_id": account_id,
        "by": by,
        "from": format_ts(s),
        "to": format_ts(e),
        "hours": hours,
        "series": series,
        "totals": {**totals, "amount": _money(totals["amount"])},
    }


def details(client: Client, account_id: str, start: str | None, end: str | None) -> Row:
    """The tables of the account page over the range: bill lines (as `billing bills` prints them),
    settlements, rejections with their current reasons, rate-limit violations."""
    s, e = time_range(client, start, end, account_id)
    lines = queries.bills(client, account_id, format_ts(s), format_ts(e))
    params = {**_range_params(s, e), "a": account_id, "n": MAX_ROWS + 1}
    settlements = _rows(
        client,
        (
            "SELECT hour, kind, amount, voucher_part, cash_part, debt_added, debt_after, balance_after, settled_at FROM account_settlements "
            f"WHERE account_id = {{a:String}} AND {RANGE} ORDER BY seq, hour LIMIT {{n:UInt32}}"
        ),
        params,
    )
    rejections = [
        r
        for r in map(queries.with_record, queries.rejected(client, account_id))  # as `billing rejected` shows them
        if not r["timestamp"] or s <= parse_ts(r["timestamp"]) < e
    ]
    violations = _rows(
        client,
        (
            "SELECT ts, event_id, limit_name, window_start, observed, allowed FROM rate_limit_violations "
            f"WHERE account_id = {{a:String}} AND {RANGE} ORDER BY ts, limit_name LIMIT {{n:UInt32}}"
        ),
        params,
    )
    return {
        "account_id": account_id,
        "from": format_ts(s),
        "to": format_ts(e),
        "bills": lines[:MAX_ROWS],
        "bills_cut": len(lines) > MAX_ROWS,
        "bills_total": _money(sum((Decimal(r["amount"]) for r in lines), ZERO)),
        "settlements": settlements[:MAX_ROWS],
        "settlements_cut": len(settlements) > MAX_ROWS,
        "rejections": rejections[:MAX_ROWS],
        "rejections_cut": len(rejections) > MAX_ROWS,
        "violations": violations[:MAX_ROWS],
        "violations_cut": len(violations) > MAX_ROWS,
    }


def statement(client: Client, account_id: str, month: str) -> Row:
    """A month's statement: lines per key and item, total, and how it was paid."""
    try:
        s = parse_ts(f"{month}-01T00:00:00+08:00")
    except ValueError:
        raise ValueError(f"month must be YYYY-MM, not {month!r}") from None
    year, mon = int(month[:4]), int(month[5:7])
    e = parse_ts(f"{year + mon // 12:04d}-{mon % 12 + 1:02d}-01T00:00:00+08:00")
    params = {**_range_params(s, e), "a": account_id}
    lines = _rows(
        client,
        (
            "SELECT item, api_key_id, sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
            "sum(free_tokens) AS free_tokens, sum(billed_input_tokens) AS billed_input_tokens, sum(billed_output_tokens) AS billed_output_tokens, "
            f"sum(quantity) AS quantity, sum(amount) AS amount FROM hourly_bills WHERE account_id = {{a:String}} AND {RANGE} "
            "GROUP BY item, api_key_id ORDER BY item, api_key_id"
        ),
        params,
    )
    paid = _rows(
        client,
        (
            "SELECT sum(amount) AS settled, sum(voucher_part) AS vouchers, sum(cash_part) AS cash, sum(debt_added) AS debt_added "
            f"FROM account_settlements WHERE account_id = {{a:String}} AND {RANGE}"
        ),
        params,
    )[0]
    total = sum((Decimal(r["amount"]) for r in lines), ZERO)
    return {
        "account_id": account_id,
        "month": f"{year:04d}-{mon:02d}",
        "from": format_ts(s),
        "to": format_ts(e),
        "lines": lines,
        "total": _money(total),
        "currency": "CNY",
        "payments": {k: _money(v) for k, v in paid.items()},
    }


STATEMENT_COLUMNS = (
    "item",
    "api_key_id",
    "requests",
    "input_tokens",
    "output_tokens",
    "free_tokens",
    "billed_input_tokens",
    "billed_output_tokens",
    "quantity",
    "amount",
)


def statement_csv(data: Row) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["account_id", data["account_id"], "month", data["month"], "currency", data["currency"]])
    writer.writerow(STATEMENT_COLUMNS)
    for line in data["lines"]:
        writer.writerow([line[c] for c in STATEMENT_COLUMNS])
    writer.writerow(["total", "", "", "", "", "", "", "", "", data["total"]])
    return out.getvalue()


def _money(value: Any) -> str:
    return f"{Decimal(value or 0):.6f}"


def pipeline_health(health: Row, metrics_text: str) -> Row:
    """The worker's own figures: per partition offset, committed offset and lag (from its
    Prometheus text, read with prometheus_client's parser), records and batches so far."""
    from prometheus_client.parser import text_string_to_metric_families

    partitions: dict[str, Row] = {}
    records = 0.0
    for family in text_string_to_metric_families(metrics_text or ""):
        for sample in family.samples:
            partition = sample.labels.get("partition")
            if sample.name == "billing_records_total":
                records += sample.value
            elif partition is not None and sample.name.startswith("billing_partition_"):
                key = sample.name[len("billing_partition_") :]
                partitions.setdefault(partition, {"partition": int(partition)})[key] = int(sample.value)
    stats = health.get("stats", {})
    batches = int(stats.get("batches", 0))
    seconds = float(health.get("batch_seconds", 0.0))
    return {
        "available": bool(health.get("stats") is not None and metrics_text),
        "records": int(records),
        "batches": batches,
        "batch_seconds": seconds,
        "mean_batch_ms": round(seconds / batches * 1000, 1) if batches else None,
        "batch_failures": int(stats.get("batch_failures", 0)),
        "partitions": sorted(partitions.values(), key=lambda p: p["partition"]),
        "watermarks": health.get("event_time_watermarks", {}),
        "epoch": health.get("epoch"),
    }
