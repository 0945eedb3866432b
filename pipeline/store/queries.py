"""What users read: bill lines, rejections, account summaries, `wait` barriers.

Plain functions over a clickhouse-connect client; every user value is a bound parameter. The
worker's HTTP API and the CLI both call these, so a query means the same through either path.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.core.quota import free_left
from pipeline.core.settlement import status_of
from pipeline.core.state import AccountState
from pipeline.core.timestamps import TimestampError, format_ts, parse_ts

Row = dict[str, Any]
BILL_FIELDS = (
    "account_id",
    "hour",
    "api_key_id",
    "item",
    "requests",
    "input_tokens",
    "output_tokens",
    "free_tokens",
    "billed_input_tokens",
    "billed_output_tokens",
    "quantity",
    "amount",
)


def money(amount: Decimal) -> str:
    return f"{amount:.6f}"


def _time_filters(start: str | None, end: str | None, column: str, params: dict[str, Any]) -> list[str]:
    where = []
    if start:
        params["from_s"] = parse_ts(start) // 1_000_000
        where.append(f"toUnixTimestamp({column}) >= {{from_s:Int64}}")
    if end:
        params["to_s"] = parse_ts(end) // 1_000_000
        where.append(f"toUnixTimestamp({column}) < {{to_s:Int64}}")
    return where


def bills(client: Client, account: str | None = None, start: str | None = None, end: str | None = None) -> list[Row]:
    """Current hourly lines; `--from` inclusive, `--to` exclusive, on the line's hour."""
    params: dict[str, Any] = {}
    where = _time_filters(start, end, "hour", params)
    if account:
        params["account"] = account
        where.append("account_id = {account:String}")
    sql = (
        "SELECT account_id, toUnixTimestamp(hour), api_key_id, item, requests, input_tokens, output_tokens, free_tokens, "
        "billed_input_tokens, billed_output_tokens, quantity, amount FROM bill_lines FINAL"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY account_id, hour, api_key_id, item"
    )
    rows = []
    for values in client.query(sql, parameters=params).result_rows:
        row = dict(zip(BILL_FIELDS, values))
        row["hour"] = format_ts(row["hour"] * 1_000_000)
        row["amount"] = money(row["amount"])
        rows.append(row)
    return rows


def rejected(client: Client, account: str | None = None, reason: str | None = None) -> list[Row]:
    params: dict[str, Any] = {}
    where = []
    if account:
        params["account"] = account
        where.append("account_id = {account:String}")
    if reason:
        params["reason"] = reason
        where.append("reason = {reason:String}")
    # the view lists each record with the reason of the catalog now in force (after rebills)
    sql = (
        "SELECT event_id, account_id, reason, detail, kind, coalesce(toUnixTimestamp64Micro(event_ts), 0) AS ts_us, record "
        "FROM rejected_records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY account_id, ts_us, record_id"
    )
    return [
        {"event_id": e, "account_id": a, "reason": r, "detail": d, "kind": k, "timestamp": format_ts(ts) if ts else "", "record": rec}
        for e, a, r, d, k, ts, rec in client.query(sql, parameters=params).result_rows
    ]


def account(client: Client, account_id: str, free_quota_tokens: int) -> Row | None:
    result = client.query(
        "SELECT argMax(state, seq) FROM account_state WHERE account_id = {a:String} GROUP BY account_id",
        parameters={"a": account_id},
    )
    if not result.result_rows:
        return None
    state = AccountState.from_json(result.result_rows[0][0])
    return {
        "account_id": account_id,
        "status": status_of(state),
        "cash_balance": money(state.cash_balance),
        "debt": money(state.debt),
        "vouchers": [
            {
                "voucher_id": v.voucher_id,
                "remaining": money(v.remaining),
                "expires_at": format_ts(v.expires_us) if v.expires_us is not None else None,
            }
            for v in state.vouchers.values()
        ],
        "free_tokens_left": free_left(free_quota_tokens, state.free_used),
        "last_settled_hour": format_ts(state.last_settled_hour) if state.last_settled_hour is not None else None,
        "open_hours": {format_ts(h): money(a) for h, a in sorted(state.open_hours.items())},
        "clock": format_ts(state.max_ts_us) if state.max_ts_us else None,
        "keys": {
            k: {"created_at": format_ts(v.created_us), "revoked_at": format_ts(v.revoked_us) if v.revoked_us else None}
            for k, v in state.keys.items()
        },
        "duplicates": state.duplicates,
    }


def account_ids(client: Client) -> list[str]:
    return [row[0] for row in client.query("SELECT DISTINCT account_id FROM account_state ORDER BY account_id").result_rows]


def settlements(client: Client, account: str | None = None) -> list[Row]:
    params: dict[str, Any] = {}
    where = ""
    if account:
        params["account"] = account
        where = " WHERE account_id = {account:String}"
    sql = (
        "SELECT account_id, toUnixTimestamp(hour), kind, amount, voucher_part, cash_part, debt_added, debt_after, balance_after, seq "
        "FROM settlements FINAL" + where + " ORDER BY account_id, seq, hour"
    )
    names = ("account_id", "hour", "kind", "amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after", "seq")
    rows = []
    for values in client.query(sql, parameters=params).result_rows:
        row = dict(zip(names, values))
        row["hour"] = format_ts(row["hour"] * 1_000_000)
        for name in ("amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after"):
            row[name] = money(row[name])
        rows.append(row)
    return rows


def barrier_partitions(client: Client, barrier_id: str) -> int:
    result = client.query("SELECT uniqExact(partition) FROM barriers WHERE barrier_id = {b:String}", parameters={"b": barrier_id})
    return int(result.result_rows[0][0])


def summary(client: Client) -> Row:
    """Counts for `billing up`'s status line and the worker's health endpoint."""
    (records,) = client.query("SELECT count() FROM raw_records").result_rows[0]
    (lines, amount) = client.query("SELECT count(), sum(amount) FROM bill_lines FINAL").result_rows[0]
    (rejections,) = client.query("SELECT count() FROM rejections FINAL").result_rows[0]
    return {"records": records, "bill_lines": lines, "amount": money(amount or Decimal(0)), "rejections": rejections}


def rebill_accounts(client: Client, start: str, end: str, account: str | None) -> list[str]:
    from pipeline.stream.rebill import affected_accounts

    return affected_accounts(client, parse_ts(start), parse_ts(end), account)


def rebill_plan(client: Client, catalog_data: dict[str, Any], start: str, end: str, accounts: list[str], run_id: str) -> Row:
    """Replay and diff some accounts (no writes): their diffs and the `rebill.lines` records to publish."""
    from pipeline.core.catalog import parse_catalog
    from pipeline.stream.rebill import plan_json, plan_rebill

    plan = plan_rebill(client, parse_catalog(catalog_data), parse_ts(start), parse_ts(end), accounts=accounts, run_id=run_id)
    return plan_json(plan)


def write_rebill_audit(client: Client, audit: Row) -> None:
    client.insert(
        "rebill_runs",
        [
            [
                audit["run_id"],
                audit["run_by"],
                audit["run_at_ms"],
                audit["from"],
                audit["to"],
                audit["account_filter"],
                audit["catalog_version"],
                audit["records_read"],
                audit["lines_changed"],
            ]
        ],
        column_names=[
            "run_id",
            "run_by",
            "run_at",
            "range_from",
            "range_to",
            "account_filter",
            "catalog_version",
            "records_read",
            "lines_changed",
        ],
    )
    diffs = audit["diffs"]
    if diffs:
        client.insert(
            "rebill_diffs",
            [
                [
                    audit["run_id"],
                    d["account_id"],
                    parse_ts(d["hour"]) // 1_000_000,
                    Decimal(d["old_amount"]),
                    Decimal(d["new_amount"]),
                    Decimal(d["delta"]),
                ]
                for d in diffs
            ],
            column_names=["run_id", "account_id", "hour", "old_amount", "new_amount", "delta"],
        )
    if audit["now_billed"]:
        client.insert(
            "rejection_resolutions",
            [[acc, event_id, audit["run_id"]] for acc, event_id in audit["now_billed"]],
            column_names=["account_id", "record_id", "run_id"],
        )
    # every replayed rejected record's outcome under the run's catalog: the newest run's says what is listed
    run, at = audit["run_id"], audit["run_at_ms"]
    revisions = [[acc, event_id, run, at, 1, "", "", 0, ""] for acc, event_id in audit["now_billed"]]
    revisions += [
        [acc, event_id, run, at, 0, reason, detail, ts_us, record]
        for acc, event_id, reason, detail, ts_us, record in audit.get("still_rejected", [])
    ]
    if revisions:
        client.insert(
            "rejection_revisions",
            revisions,
            column_names=["account_id", "record_id", "run_id", "revised_at", "resolved", "reason", "detail", "event_ts", "record"],
        )


def with_record(row: dict[str, Any]) -> dict[str, Any]:
    """The record as a JSON value (it was received as JSON; `record_text` keeps its exact text), and
    the record's own timestamp where the row has none (a record rejected by the schema)."""
    text = row.get("record")
    if not isinstance(text, str):
        return row
    try:  # hostile records stay text: NaN/Infinity (not JSON), nesting too deep for Python, 5,000-digit numbers
        record: Any = json.loads(text, parse_constant=_not_json)
        json.dumps(record)
    except (ValueError, RecursionError):
        record = text
    row = {**row, "record": record, "record_text": text}
    stamp = record.get("timestamp") if isinstance(record, dict) else None
    if not row.get("timestamp") and isinstance(stamp, str):
        try:
            row["timestamp"] = format_ts(parse_ts(stamp))
        except (TimestampError, ValueError, OverflowError):
            pass  # not RFC 3339, or out of range (often why it was rejected): the record shows it as sent
    return row


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
