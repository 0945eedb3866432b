"""`billing rebill`: re-price a time range with another catalog, through the same fold.

Each affected account's whole log is replayed from the raw archive (ClickHouse keeps every
input record in log order; the embedded broker forgets, and Tansu answers offsets-for-times
wrongly, DESIGN §7) with a fresh state and the given catalog, exactly as a fresh run of those
records would go. Lines whose hour is in [from, to) and whose values differ from the current
ones form the plan. Applying the plan publishes one `rebill.lines` record per account into its
log: the worker, the only writer of account state, replaces the lines with a revision above
every earlier one and settles the money difference as an adjustment. A second identical run
finds no difference and writes nothing.
"""

from __future__ import annotations

import getpass
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterator

import orjson
from clickhouse_connect.driver.client import Client

from pipeline.batch.processor import KEEP_MINUTES_US
from pipeline.core.catalog import Catalog
from pipeline.core.fold import apply
from pipeline.core.records import CONTROL_KINDS, INVALID_KIND, Invalid, Usage, parse_record, refused_on_arrival
from pipeline.core.state import LINE_COUNTS, ZERO, AccountState, Line, LineKey
from pipeline.core.timestamps import US_PER_SECOND, format_ts
from pipeline.store.statestore import LINE_SELECT, line_of
from pipeline.stream.gcpause import gc_paused

LOG_PAGE_ROWS = 50_000  # archived records per query: a rebill holds one page, whatever an account's history
LOG_ORDER = ("account_id", "epoch", "partition", "offset", "idx")  # raw_records' sort key: log order per account
_LOG_TYPES = ("String", "String", "UInt32", "UInt64", "UInt32")
TRIM_EVERY = 10_000  # records replayed between trims of an account's working sets
DERIVED_KINDS = ("rebill.lines",)  # outputs of earlier rebills: a replay recomputes them


@dataclass
class LineChange:
    account_id: str
    key: LineKey
    old: Line | None
    new: Line


@dataclass
class RebillPlan:
    run_id: str
    catalog_version: str
    start_us: int
    end_us: int
    account_filter: str | None
    records_read: int = 0
    accounts: list[str] = field(default_factory=list)
    changes: list[LineChange] = field(default_factory=list)
    now_billed: list[tuple[str, str]] = field(default_factory=list)  # (account, event_id) rejected before, billed now
    # (account, event_id, reason, detail, ts_us, record): calls this catalog rejects, whether the stream
    # rejected them (the reason may differ now) or billed them; the record goes along, since a call
    # the stream billed has no row of its own in `rejections`
    still_rejected: list[tuple[str, str, str, str, int, str]] = field(default_factory=list)
    clocks: dict[str, int] = field(default_factory=dict)

    def hour_diffs(self) -> list[dict[str, Any]]:
        """Per account-hour: old amount, new amount, delta (what the audit keeps and the CLI prints)."""
        sums: dict[tuple[str, int], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
        for change in self.changes:
            pair = sums[(change.account_id, change.key[0])]
            pair[0] += change.old.amount if change.old else ZERO
            pair[1] += change.new.amount
        return [
            {
                "account_id": acc,
                "hour": format_ts(hour),
                "old_amount": f"{old:.6f}",
                "new_amount": f"{new:.6f}",
                "delta": f"{new - old:.6f}",
            }
            for (acc, hour), (old, new) in sorted(sums.items())
        ]

    def records(self) -> Iterator[bytes]:
        """One `rebill.lines` record per changed account, stamped with the account's latest event
        time so that it does not move the account's clock."""
        by_account: dict[str, list[LineChange]] = defaultdict(list)
        for change in self.changes:
            by_account[change.account_id].append(change)
        for acc, changes in sorted(by_account.items()):
            yield orjson.dumps(
                {
                    "type": "rebill.lines",
                    "account_id": acc,
                    "timestamp": format_ts(self.clocks[acc]),
                    "run_id": self.run_id,
                    "catalog_version": self.catalog_version,
                    "lines": [_line_json(c) for c in changes],
                }
            )


def _line_json(change: LineChange) -> dict[str, Any]:
    hour, key, item = change.key
    spec: dict[str, Any] = {"hour": format_ts(hour), "api_key_id": key, "item": item}
    spec.update({name: getattr(change.new, name) for name in LINE_COUNTS})
    spec["amount"] = f"{change.new.amount:.6f}"
    spec["base_revision"] = change.old.revision if change.old else 0  # what the worker checks before replacing
    return spec


def affected_accounts(client: Client, start_us: int, end_us: int, account: str | None) -> list[str]:
    params: dict[str, Any] = {"s": start_us, "e": end_us}
    where = "toUnixTimestamp64Micro(event_ts) >= {s:Int64} AND toUnixTimestamp64Micro(event_ts) < {e:Int64}"
    if account:
        params["a"] = account
        where += " AND account_id = {a:String}"
    rows = client.query(f"SELECT DISTINCT account_id FROM raw_records WHERE {where} ORDER BY account_id", parameters=params)
    return [r[0] for r in rows.result_rows]


def _archived_records(client: Client, accounts: list[str]) -> Iterator[tuple[str, str, str]]:
    """(account, kind, payload) of the accounts' archived records, each account's in log order
    (epochs sort in time order), read in pages that continue after the last row's sort key."""
    after: tuple[Any, ...] | None = None
    while True:
        where, params = "account_id IN {a:Array(String)}", {"a": accounts}
        if after is not None:
            where += " AND " + _after_condition()
            params.update({f"k{i}": value for i, value in enumerate(after)})
        rows = client.query(
            f"SELECT {', '.join(LOG_ORDER)}, kind, payload FROM raw_records FINAL WHERE {where} "
            f"ORDER BY {', '.join(LOG_ORDER)} LIMIT {LOG_PAGE_ROWS}",
            parameters=params,
        ).result_rows
        for row in rows:
            yield row[0], row[5], row[6]
        if len(rows) < LOG_PAGE_ROWS:
            return
        last = tuple(rows[-1][: len(LOG_ORDER)])
        if after is not None and last <= after:  # UTF-8 byte order is code point order: Python agrees with ClickHouse
            raise RuntimeError(f"reading the archive did not advance past {after}: stopping instead of replaying records twice")
        after = last


def _after_condition() -> str:
    """Rows after (k0, k1, ...) in sort-key order, spelled out column by column so that the
    primary key index can serve it: k0 > v0 OR (k0 = v0 AND k1 > v1) OR ..."""
    terms = []
    for i, column in enumerate(LOG_ORDER):
        equal = [f"{c} = {{k{j}:{_LOG_TYPES[j]}}}" for j, c in enumerate(LOG_ORDER[:i])]
        terms.append("(" + " AND ".join(equal + [f"{column} > {{k{i}:{_LOG_TYPES[i]}}}"]) + ")")
    return "(" + " OR ".join(terms) + ")"


def _current_lines(client: Client, accounts: list[str], start_us: int, end_us: int) -> dict[tuple[str, LineKey], Line]:
    result = client.query(
        LINE_SELECT + " FINAL WHERE account_id IN {a:Array(String)} AND toUnixTimestamp(hour) >= {s:Int64} "
        "AND toUnixTimestamp(hour) < {e:Int64}",
        parameters={"a": accounts, "s": start_us // US_PER_SECOND, "e": -(-end_us // US_PER_SECOND)},
    )
    return {(acc, (hour_s * US_PER_SECOND, key, item)): line_of(values) for acc, hour_s, key, item, *values in result.result_rows}


def _rejected_ids(client: Client, accounts: list[str]) -> set[tuple[str, str]]:
    """Usage records rejected by the stream or by an earlier rebill (whatever rebills did to them
    since): a replay gives each its outcome under the new catalog, billed or rejected with the
    reason that now holds."""
    result = client.query(
        "SELECT account_id, event_id FROM rejections FINAL WHERE account_id IN {a:Array(String)} AND event_id != '' "
        "AND reason != 'invalid_schema' AND reason != 'conflicting_duplicate' "
        "UNION DISTINCT SELECT account_id, record_id FROM rejection_revisions WHERE account_id IN {a:Array(String)}",
        parameters={"a": accounts},
    )
    return {(a, e) for a, e in result.result_rows}


def _same_line(a: Line, b: Line) -> bool:
    return all(getattr(a, n) == getattr(b, n) for n in LINE_COUNTS) and a.amount == b.amount


def plan_rebill(
    client: Client,
    catalog: Catalog,
    start_us: int,
    end_us: int,
    account: str | None = None,
    accounts: list[str] | None = None,
    run_id: str | None = None,
) -> RebillPlan:
    """The plan for the affected accounts (or the given subset of them, for progress in chunks)."""
    plan = RebillPlan(run_id or new_run_id(), catalog.version, start_us, end_us, account)
    plan.accounts = accounts if accounts is not None else affected_accounts(client, start_us, end_us, account)
    if not plan.accounts:
        return plan
    current = _current_lines(client, plan.accounts, start_us, end_us)
    rejected = _rejected_ids(client, plan.accounts)
    replayed: set[str] = set()
    state: AccountState | None = None
    with gc_paused():
        for acc, kind, payload in _archived_records(client, plan.accounts):
            if state is None or state.account_id != acc:
                if state is not None:
                    _compare(plan, state, current)
                state = AccountState(acc)
                replayed.add(acc)
            if kind not in DERIVED_KINDS:
                _replay_record(plan, catalog, state, kind, payload, rejected)
        if state is not None:
            _compare(plan, state, current)
        for acc in plan.accounts:
            if acc not in replayed:  # nothing archived: every current line in range goes
                _compare(plan, AccountState(acc), current)
    return plan


def _replay_record(
    plan: RebillPlan, catalog: Catalog, state: AccountState, kind: str, payload: str, rejected: set[tuple[str, str]]
) -> None:
    """One record of a fresh run of the account's whole log under the plan's catalog (a control
    record archived under its own type was authenticated when it arrived)."""
    acc = state.account_id
    raw = payload.encode("utf-8")
    record = parse_record(raw, acc, trust_control=kind in CONTROL_KINDS)
    if kind == INVALID_KIND and not isinstance(record, Invalid):
        record = refused_on_arrival(raw, acc)
    outcome = apply(state, record, catalog)
    if isinstance(record, Usage) and plan.start_us <= record.ts_us < plan.end_us:
        rejection = outcome.rejection if outcome.rejection is not None and outcome.rejection.record_id == record.event_id else None
        if outcome.priced is not None and (acc, record.event_id) in rejected:
            plan.now_billed.append((acc, record.event_id))
        elif rejection is not None:  # listed with this reason from now on (a billed call's lines change in this plan)
            plan.still_rejected.append((acc, record.event_id, rejection.reason, rejection.detail, record.ts_us, payload))
    plan.records_read += 1
    if plan.records_read % TRIM_EVERY == 0:
        _trim(state, plan.start_us, plan.end_us)


def _trim(state: AccountState, start_us: int, end_us: int) -> None:
    """Drop what the replay no longer needs, so that its memory does not grow with the account's
    history: lines outside the range (only those in it are compared; a record changes only its
    own hour's lines) and rate windows older than the worker keeps (they flag calls, they never
    change a line). The identities seen stay: a duplicate can come at any time."""
    state.keep_lines_between(start_us, end_us)
    state.drop_windows_before(state.window_floor(KEEP_MINUTES_US))


def _compare(plan: RebillPlan, state: AccountState, current: dict[tuple[str, LineKey], Line]) -> None:
    """The account's lines in range that differ from the current ones go into the plan."""
    acc, start_us, end_us = state.account_id, plan.start_us, plan.end_us
    plan.clocks[acc] = state.max_ts_us
    in_range = {k: v for k, v in state.lines.items() if start_us <= k[0] < end_us}
    for key in sorted(set(in_range) | {k for (a, k) in current if a == acc}):
        new = in_range.get(key) or Line()
        old = current.get((acc, key))
        if old is None and new.requests == 0:
            continue
        if old is None or not _same_line(old, new):
            plan.changes.append(LineChange(acc, key, old, new))


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def plan_json(plan: RebillPlan) -> dict[str, Any]:
    """A plan (or one chunk of it) as the worker's API returns it."""
    return {
        "records_read": plan.records_read,
        "lines_changed": len(plan.changes),
        "diffs": plan.hour_diffs(),
        "now_billed": [list(p) for p in plan.now_billed],
        "still_rejected": [list(p) for p in plan.still_rejected],
        "records": [r.decode() for r in plan.records()],
    }


def audit_record(
    run_id: str, start: str, end: str, account: str | None, catalog_version: str, chunks: list[dict[str, Any]]
) -> dict[str, Any]:
    """The audit record of a run: who, when, range, catalog, records read, per account-hour diff."""
    return {
        "run_id": run_id,
        "run_by": getpass.getuser(),
        "run_at_ms": int(time.time() * 1000),
        "from": start,
        "to": end,
        "account_filter": account or "",
        "catalog_version": catalog_version,
        "records_read": sum(c["records_read"] for c in chunks),
        "lines_changed": sum(c["lines_changed"] for c in chunks),
        "diffs": [d for c in chunks for d in c["diffs"]],
        "now_billed": [p for c in chunks for p in c["now_billed"]],
        "still_rejected": [p for c in chunks for p in c.get("still_rejected", [])],
    }


def refused_accounts(stale_rejections: list[dict[str, Any]], run_id: str) -> set[str]:
    """Accounts whose `rebill.lines` record of this run the worker refused as stale."""
    refused = set()
    for row in stale_rejections:
        try:
            if orjson.loads(row["record"]).get("run_id") == run_id:
                refused.add(row["account_id"])
        except (orjson.JSONDecodeError, AttributeError):
            continue
    return refused


def without_accounts(audit: dict[str, Any], accounts: set[str], records: list[str]) -> dict[str, Any]:
    """The audit of what was applied: refused accounts' diffs and lines left out."""
    if not accounts:
        return audit
    refused_lines = sum(len(body["lines"]) for body in map(orjson.loads, records) if body["account_id"] in accounts)
    return {
        **audit,
        "lines_changed": audit["lines_changed"] - refused_lines,
        "diffs": [d for d in audit["diffs"] if d["account_id"] not in accounts],
        "now_billed": [p for p in audit["now_billed"] if p[0] not in accounts],
        "still_rejected": [p for p in audit.get("still_rejected", []) if p[0] not in accounts],
        "refused_accounts": sorted(accounts),
    }
