"""An independent computation of the expected bills, rejections, duplicate count and settlement.

Written from ../shared/spec/BILLING_RULES.md (§1-§10) and docs/interpretations.md only; it
imports nothing from the `pipeline` package so that a bug there cannot hide in both. It reads
the catalog JSON file itself and validates records with the JSON Schemas in schemas/records/
(compiled with fastjsonschema) plus its own RFC 3339 check.

    expected(lines, catalog_path=None, grace_minutes=None) -> Expected

`Expected.bills` maps (account_id, hour, api_key_id, item) to the bill-line fields of the
contract (`requests`, `input_tokens`, `output_tokens`, `free_tokens`, `billed_input_tokens`,
`billed_output_tokens`, `quantity` as int, `amount` as Decimal); `hour` is the start of the
call's hour in +08:00, e.g. "2024-06-07T10:00:00+08:00". `Expected.rejections` lists one
(account_id, event_id or "", reason) per rejected delivery, in input order.
`Expected.duplicates` counts duplicate deliveries. Rate windows are not computed.

Settlement (BILLING_RULES §9, docs/interpretations.md "Settlement"):
`Expected.settlements` lists every settlement in the order it happens: dicts with `account_id`,
`hour` (as above), `kind` (`regular` | `adjustment`), `amount`, `voucher_part`, `cash_part`,
`debt_added`, `debt_after`, `balance_after` (Decimal), and `voucher_uses` (list of
(voucher_id, Decimal) in the order drawn); `settlement_rows()` gives them with 6-place strings.
`Expected.status_changes` lists (account_id, status) on every change of status, in order
(`status_log` has the same with the account clock and cause). `Expected.accounts` maps each
account to the `billing account` summary: `account_id`, `status`, `cash_balance`, `debt`,
`vouchers` (list of {voucher_id, remaining, expires_at} in grant order), `free_tokens_left`,
`last_settled_hour` (Decimal amounts; `account_rows()` gives decimal strings).
`assert_settlement_totals(exp)` checks that settlements add up to the bill lines of closed hours.

Settlement choices (docs/interpretations.md leaves these open):
- the account clock is the latest timestamp of the records that claim an identity (billed,
  applied, no-op, or rejected for any reason but `invalid_schema` / `conflicting_duplicate`)
  and of `clock.tick` records; duplicate deliveries change nothing (their time is already in);
- a record is applied first, then the clock moves, then hours close: a recharge published
  before the record that closes an hour is available to that hour's settlement;
- an hour "has activity" when an accepted call (api or console) falls in it; it closes with a
  regular settlement (possibly 0) once hour end + grace <= clock, oldest hour first;
- every accepted call for an hour that already had its regular settlement gives an adjustment
  settlement right after the record, even when its amount is 0 (late console / free call);
- a voucher is drawn only for a settlement of an hour that ends strictly before its expiry;
  its grant time does not matter; expired and exhausted vouchers stay listed;
- `last_settled_hour` is the latest (greatest) hour with a regular settlement.

Choices where the rule book and interpretations leave room (kept in step with the report that
came with this file):
- an invalid record's rejection carries the `event_id` it names when that is a string (it is
  listed, just not trusted for identity); account records carry "";
- a record that is not a JSON object, or whose `account_id` is not a string, is rejected under
  account "";
- the canonical payload compared for duplicates is the record exactly as parsed (keys sorted,
  no spaces): no defaults are filled in before comparing;
- a plugin entry with count 0 is dropped before any check (no line, no rejection, whatever its
  name);
- `expires_at` of a voucher must be a valid RFC 3339 timestamp with offset, like `timestamp`;
- a JSON number with a zero fraction (e.g. 12.0) is an integer, as JSON Schema says.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import fastjsonschema

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = ROOT / "schemas" / "catalog.json"
SCHEMA_DIR = ROOT / "schemas" / "records"

TZ8 = timezone(timedelta(hours=8))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NS = 1_000_000_000
HOUR_NS = 3600 * NS

REASONS = (
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
)
KINDS = (
    "usage",
    "api_key.created",
    "api_key.revoked",
    "credit.recharge",
    "credit.voucher",
    "limits.set",
    "whitelist.add",
    "whitelist.remove",
)
TICK = "clock.tick"
ALL_KINDS = (*KINDS, TICK)  # KINDS stays the list the classic workload covers
DEFAULT_GRACE_MINUTES = 10
LINE_INT_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "free_tokens",
    "billed_input_tokens",
    "billed_output_tokens",
    "quantity",
)

_MONEY = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])

_SIX = Decimal("0.000001")

# ---------------------------------------------------------------------------------------------
# time


_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))$")


def parse_rfc3339_ns(text: Any) -> int | None:
    """RFC 3339 with an offset -> integer nanoseconds since the epoch; None when it is not one."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7)
    if m.group(8):
        offset_min = 0
    else:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset_min = oh * 60 + om
        if m.group(9) == "-":
            offset_min = -offset_min
    leap = second == 60  # RFC 3339: a leap second, only as the last second of a UTC day
    try:
        moment = datetime(year, month, day, hour, minute, 59 if leap else second, tzinfo=timezone(timedelta(minutes=offset_min)))
    except ValueError:  # month 13, 31 June, second 61, ...
        return None
    delta = moment - _EPOCH
    whole = delta.days * 86_400 + delta.seconds
    if leap:  # taken as the last microsecond of its day (docs/interpretations.md)
        return (whole + 1) * NS - 1000 if (whole + 1) % 86_400 == 0 else None
    nanos = int((frac[1:] + "000000000")[:9]) if frac else 0
    return whole * NS + nanos


def day_start_ns(day: str) -> int:
    """00:00 Asia/Shanghai of a YYYY-MM-DD date (when a dated price starts)."""
    y, m, d = (int(x) for x in day.split("-"))
    delta = datetime(y, m, d, tzinfo=TZ8) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS


def hour_str(ts_ns: int) -> str:
    """The start of the +08:00 wall-clock hour holding ts_ns, as RFC 3339."""
    start_s = (ts_ns // HOUR_NS) * 3600  # +08:00 hours coincide with UTC hours
    return (_EPOCH + timedelta(seconds=start_s)).astimezone(TZ8).isoformat()


def hour_start_ns(ts_ns: int) -> int:
    return (ts_ns // HOUR_NS) * HOUR_NS


def ts_str(ts_ns: int) -> str:
    """An instant as RFC 3339 in +08:00: whole seconds, else 6 (or 9) fractional digits."""
    whole, frac = divmod(ts_ns, NS)
    text = (_EPOCH + timedelta(seconds=whole)).astimezone(TZ8).isoformat()
    if frac:
        digits = f"{frac // 1000:06d}" if frac % 1000 == 0 else f"{frac:09d}"
        text = text[:-6] + "." + digits + text[-6:]
    return text


# ---------------------------------------------------------------------------------------------
# catalog


@dataclass(frozen=True)
class _Priced:
    start_ns: int | None  # None = always
    values: tuple[Decimal, ...]


def _versions(prices: list[dict[str, Any]], fields: tuple[str, ...], per: int) -> list[_Priced]:
    out = []
    for p in prices:
        start = None if p.get("from") is None else day_start_ns(p["from"])
        vals = tuple(_MONEY.divide(Decimal(p[f]), Decimal(per)) for f in fields)
        out.append(_Priced(start, vals))
    return out


def _price_at(versions: list[_Priced], ts_ns: int) -> tuple[Decimal, ...] | None:
    """The version in force at ts_ns: the one with the latest start at or before it."""
    live = [v for v in versions if v.start_ns is None or v.start_ns <= ts_ns]
    if not live:
        return None
    return max(live, key=lambda v: -(10**40) if v.start_ns is None else v.start_ns).values


@dataclass
class OracleCatalog:
    free_quota: int
    global_max_input: int
    max_active_keys: int
    models: dict[str, dict[str, Any]]  # name -> {context, max_input, whitelist_only, versions}
    plugins: dict[str, list[_Priced]]
    grace_minutes: int = DEFAULT_GRACE_MINUTES

    @classmethod
    def load(cls, path: str | Path | None = None) -> "OracleCatalog":
        data = json.loads(Path(path or DEFAULT_CATALOG).read_text(encoding="utf-8"))
        models = {}
        for name, spec in data["models"].items():
            models[name] = {
                "context": spec.get("context"),
                "max_input": spec.get("max_input"),
                "whitelist_only": bool(spec.get("whitelist_only")),
                # per-token price = per_1k / 1000, exact
                "versions": _versions(spec["prices"], ("input_per_1k", "output_per_1k"), 1000),
            }
        plugins = {name: _versions(spec["prices"], ("per_unit",), 1) for name, spec in data["plugins"].items()}
        return cls(
            free_quota=int(data["free_quota_tokens"]),
            global_max_input=int(data["global_max_input_tokens"]),
            max_active_keys=int(data["max_active_keys"]),
            models=models,
            plugins=plugins,
            grace_minutes=int(data.get("settlement_grace_minutes", DEFAULT_GRACE_MINUTES)),
        )


# ---------------------------------------------------------------------------------------------
# schema


_validators: dict[str, Callable[[Any], Any]] = {}


def _validator(kind: str) -> Callable[[Any], Any]:
    v = _validators.get(kind)
    if v is None:
        schema = json.loads((SCHEMA_DIR / f"{kind}.json").read_text(encoding="utf-8"))
        v = _validators[kind] = fastjsonschema.compile(schema)
    return v


def _schema_ok(body: Any) -> tuple[str, int] | None:
    """(kind, timestamp ns) for a record that satisfies its schema, else None."""
    if not isinstance(body, dict):
        return None
    kind = body.get("type", "usage")
    if not isinstance(kind, str) or kind not in ALL_KINDS:
        return None
    try:
        _validator(kind)(body)
    except fastjsonschema.JsonSchemaException:
        return None
    ts = parse_rfc3339_ns(body["timestamp"])
    if ts is None:
        return None
    if "expires_at" in body and parse_rfc3339_ns(body["expires_at"]) is None:
        return None
    return kind, ts


def _canonical(body: dict[str, Any]) -> str:
    """The payload compared for duplicates: instants compared as instants (to the microsecond),
    whatever their spelling."""
    instants = {k: parse_rfc3339_ns(body[k]) // 1000 for k in ("timestamp", "expires_at") if parse_rfc3339_ns(body.get(k)) is not None}
    return json.dumps({**body, **instants}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# the fold


@dataclass
class _Key:
    revoked_ns: int | None = None


@dataclass
class _Voucher:
    voucher_id: str
    remaining: Decimal
    expires_ns: int | None


@dataclass
class _Account:
    seen: dict[str, str] = field(default_factory=dict)  # identity -> canonical payload
    keys: dict[str, _Key] = field(default_factory=dict)
    whitelist: set[str] = field(default_factory=set)
    free_used: int = 0
    # settlement
    clock_ns: int | None = None
    cash: Decimal = Decimal(0)
    debt: Decimal = Decimal(0)
    vouchers: dict[str, _Voucher] = field(default_factory=dict)  # in grant order
    pending: dict[int, Decimal] = field(default_factory=dict)  # hour start ns -> unsettled amount
    settled: set[int] = field(default_factory=set)  # hours with a regular settlement
    status: str = "active"


@dataclass
class Expected:
    bills: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    rejections: list[tuple[str, str, str]] = field(default_factory=list)
    rejected_lines: list[str] = field(default_factory=list)  # the line of each rejection, same order
    duplicates: int = 0
    # extras, for tests and reports
    free_tokens_used: dict[str, int] = field(default_factory=dict)  # account -> quota used
    straddles: list[tuple[str, str]] = field(default_factory=list)  # (account, event_id) of calls straddling the quota end
    kinds: Counter = field(default_factory=Counter)  # schema-valid deliveries per type (duplicates included)
    billed_calls: int = 0
    # settlement
    settlements: list[dict[str, Any]] = field(default_factory=list)
    status_changes: list[tuple[str, str]] = field(default_factory=list)
    status_log: list[dict[str, Any]] = field(default_factory=list)  # account_id, status, at (clock ns), cause
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    clocks: dict[str, int | None] = field(default_factory=dict)  # account -> clock ns at the end
    closed_hours: set[tuple[str, str]] = field(default_factory=set)  # (account, hour) with a regular settlement
    grace_minutes: int = DEFAULT_GRACE_MINUTES

    def listed_rejections(self) -> Counter:
        """What `billing rejected` lists: a record without a trusted identity (invalid_schema) or
        with a conflicting one is listed once per distinct line, however often it was delivered."""
        once: set[tuple[str, str, str, str]] = set()
        listed: Counter = Counter()
        for (account, event_id, reason), line in zip(self.rejections, self.rejected_lines):
            if reason in ("invalid_schema", "conflicting_duplicate"):
                if (account, event_id, reason, line) in once:
                    continue
                once.add((account, event_id, reason, line))
            listed[(account, event_id, reason)] += 1
        return listed

    def reasons(self) -> Counter:
        return Counter(r for _, _, r in self.rejections)

    def rows(self) -> list[dict[str, Any]]:
        """Bill lines as the contract's JSON objects (amount a decimal string with 6 places), sorted."""
        out = []
        for (account, hour, key, item), v in sorted(self.bills.items()):
            row = {"account_id": account, "hour": hour, "api_key_id": key, "item": item}
            row.update({f: v[f] for f in LINE_INT_FIELDS})
            row["amount"] = str(v["amount"].quantize(_SIX, context=_MONEY))
            out.append(row)
        return out

    def amounts_by_account_hour(self) -> dict[tuple[str, str], Decimal]:
        out: dict[tuple[str, str], Decimal] = {}
        for (account, hour, _, _), v in self.bills.items():
            out[(account, hour)] = out.get((account, hour), Decimal(0)) + v["amount"]
        return out

    # -- settlement views -------------------------------------------------------------------------
    def settlement_rows(self) -> list[dict[str, Any]]:
        """Settlements in order, amounts as decimal strings with 6 places (no voucher_uses)."""
        out = []
        for s in self.settlements:
            row = {k: s[k] for k in ("account_id", "hour", "kind")}
            row.update({k: _money_str(s[k]) for k in SETTLEMENT_MONEY})
            out.append(row)
        return out

    def account_rows(self) -> dict[str, dict[str, Any]]:
        """`accounts` with amounts as decimal strings with 6 places."""
        out = {}
        for account, summary in self.accounts.items():
            row = dict(summary)
            row["cash_balance"] = _money_str(summary["cash_balance"])
            row["debt"] = _money_str(summary["debt"])
            row["vouchers"] = [dict(v, remaining=_money_str(v["remaining"])) for v in summary["vouchers"]]
            out[account] = row
        return out

    def settled_by_account_hour(self) -> dict[tuple[str, str], Decimal]:
        out: dict[tuple[str, str], Decimal] = {}
        for s in self.settlements:
            key = (s["account_id"], s["hour"])
            out[key] = out.get(key, Decimal(0)) + s["amount"]
        return out

    def settled_by_account(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for s in self.settlements:
            out[s["account_id"]] = out.get(s["account_id"], Decimal(0)) + s["amount"]
        return out

    def adjustments(self) -> list[dict[str, Any]]:
        return [s for s in self.settlements if s["kind"] == "adjustment"]

    def arrears_episodes(self) -> list[dict[str, Any]]:
        """Each stretch of arrears: account_id, start / end (account clock ns; end None when the
        account is still in arrears at the end), regular settlements made during it (hours)."""
        episodes: list[dict[str, Any]] = []
        open_: dict[str, dict[str, Any]] = {}
        events: list[tuple[int, str, Any]] = []  # merge status log and settlements in order
        for s in self.status_log:
            events.append((s["order"], "status", s))
        for s in self.settlements:
            events.append((s["order"], "settlement", s))
        for _, what, item in sorted(events, key=lambda e: e[0]):
            account = item["account_id"]
            if what == "status":
                if item["status"] == "arrears":
                    open_[account] = {"account_id": account, "start": item["at"], "end": None, "hours": []}
                    episodes.append(open_[account])
                elif account in open_:
                    open_.pop(account)["end"] = item["at"]
            elif account in open_ and item["kind"] == "regular":
                open_[account]["hours"].append(item["hour"])
        return episodes


SETTLEMENT_MONEY = ("amount", "voucher_part", "cash_part", "debt_added", "debt_after", "balance_after")


def _money_str(value: Decimal) -> str:
    return str(value.quantize(_SIX, context=_MONEY))


def assert_settlement_totals(exp: Expected) -> None:
    """Settlements add up: per account (and per closed hour) the settled amounts equal the bill-line
    amounts of the closed hours; nothing is settled for an open hour; each settlement's parts add
    up; every closed hour has exactly one regular settlement, before its adjustments."""
    bills = exp.amounts_by_account_hour()
    settled = exp.settled_by_account_hour()
    for key in settled:
        assert key in exp.closed_hours, f"settled an hour that is not closed: {key}"
    for key in exp.closed_hours:
        assert settled.get(key, Decimal(0)) == bills.get(key, Decimal(0)), (key, settled.get(key), bills.get(key))
    per_account_bills: dict[str, Decimal] = {}
    for (account, hour), amount in bills.items():
        if (account, hour) in exp.closed_hours:
            per_account_bills[account] = per_account_bills.get(account, Decimal(0)) + amount
    per_account_settled = exp.settled_by_account()
    for account in set(per_account_bills) | set(per_account_settled):
        assert per_account_settled.get(account, Decimal(0)) == per_account_bills.get(account, Decimal(0)), account
    regular_seen: set[tuple[str, str]] = set()
    for s in exp.settlements:
        key = (s["account_id"], s["hour"])
        assert s["amount"] == s["voucher_part"] + s["cash_part"] + s["debt_added"], s
        assert min(s[k] for k in SETTLEMENT_MONEY) >= 0, s
        if s["kind"] == "regular":
            assert key not in regular_seen, f"two regular settlements for {key}"
            regular_seen.add(key)
        else:
            assert key in regular_seen, f"adjustment before the regular settlement of {key}"
    assert regular_seen == exp.closed_hours


def _empty_line() -> dict[str, Any]:
    line: dict[str, Any] = {f: 0 for f in LINE_INT_FIELDS}
    line["amount"] = Decimal(0)
    return line


class _Oracle:
    def __init__(self, catalog: OracleCatalog):
        self.cat = catalog
        self.accounts: dict[str, _Account] = {}
        self.out = Expected(grace_minutes=catalog.grace_minutes)
        self.line = ""
        self.grace_ns = catalog.grace_minutes * 60 * NS
        self.order = 0  # orders settlements and status changes together

    def account(self, account_id: str) -> _Account:
        acct = self.accounts.get(account_id)
        if acct is None:
            acct = self.accounts[account_id] = _Account()
        return acct

    def reject(self, account_id: str, event_id: str, reason: str) -> None:
        self.out.rejections.append((account_id, event_id, reason))
        self.out.rejected_lines.append(self.line)

    def feed(self, line: str) -> None:
        self.line = line.strip()
        try:
            body = json.loads(line)
        except (ValueError, RecursionError):
            self.reject("", "", "invalid_schema")
            return
        account_id = body.get("account_id") if isinstance(body, dict) else None
        if not isinstance(account_id, str):
            account_id = ""
        checked = _schema_ok(body)
        if checked is None:
            eid = body.get("event_id") if isinstance(body, dict) else None
            self.reject(account_id, eid if isinstance(eid, str) else "", "invalid_schema")
            return
        kind, ts = checked
        self.out.kinds[kind] += 1
        acct = self.account(account_id)
        canonical = _canonical(body)
        if kind == "usage":
            identity = body["event_id"]
        else:
            identity = kind + ":" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        event_id = body["event_id"] if kind == "usage" else ""
        earlier = acct.seen.get(identity)
        if earlier is not None:
            if earlier == canonical:
                self.out.duplicates += 1
            else:
                self.reject(account_id, event_id, "conflicting_duplicate")
            return
        acct.seen[identity] = canonical  # every non-invalid record claims its identity
        if acct.clock_ns is None or ts > acct.clock_ns:
            acct.clock_ns = ts  # the account clock (applying a record never reads it)
        self.apply(account_id, acct, kind, body, ts)
        self.close_hours(account_id, acct)  # after the record: hours the clock has passed close

    def apply(self, account_id: str, acct: _Account, kind: str, body: dict[str, Any], ts: int) -> None:
        if kind == "usage":
            self.usage(account_id, acct, body, ts)
        elif kind == "api_key.created":
            key_id = body["api_key_id"]
            if key_id in acct.keys:
                return  # a key id is never reused: no-op
            active = sum(1 for k in acct.keys.values() if k.revoked_ns is None or k.revoked_ns > ts)
            if active >= self.cat.max_active_keys:
                self.reject(account_id, "", "api_key_limit")
                return
            acct.keys[key_id] = _Key()
        elif kind == "credit.recharge":
            amount = Decimal(body["amount"])
            paid = min(amount, acct.debt)
            acct.debt = _MONEY.subtract(acct.debt, paid)
            acct.cash = _MONEY.add(acct.cash, _MONEY.subtract(amount, paid))
            self.status(account_id, acct, "recharge")
        elif kind == "credit.voucher":
            vid = body["voucher_id"]
            if vid not in acct.vouchers:  # a known voucher_id: no-op
                expires = parse_rfc3339_ns(body["expires_at"]) if "expires_at" in body else None
                acct.vouchers[vid] = _Voucher(vid, Decimal(body["amount"]), expires)
        elif kind == "api_key.revoked":
            key = acct.keys.get(body["api_key_id"])
            if key is None:
                self.reject(account_id, "", "invalid_api_key")  # not a key of this account
            elif key.revoked_ns is None or ts < key.revoked_ns:
                key.revoked_ns = ts  # twice: earliest stands
        elif kind == "whitelist.add":
            acct.whitelist.add(body["model"])
        elif kind == "whitelist.remove":
            acct.whitelist.discard(body["model"])
        # limits.set and clock.tick change nothing here

    # -- settlement ---------------------------------------------------------------------------
    def close_hours(self, account_id: str, acct: _Account) -> None:
        clock = acct.clock_ns
        for hour in sorted(acct.pending):
            if hour + HOUR_NS + self.grace_ns <= clock:
                self.settle(account_id, acct, hour, acct.pending.pop(hour))

    def settle(self, account_id: str, acct: _Account, hour: int, amount: Decimal) -> None:
        kind = "adjustment" if hour in acct.settled else "regular"
        hour_end = hour + HOUR_NS
        left = amount
        uses: list[tuple[str, Decimal]] = []
        usable = [v for v in acct.vouchers.values() if v.remaining > 0 and (v.expires_ns is None or v.expires_ns > hour_end)]
        usable.sort(key=lambda v: (v.expires_ns is None, v.expires_ns or 0, v.voucher_id))
        for v in usable:
            if left <= 0:
                break
            take = min(v.remaining, left)
            v.remaining = _MONEY.subtract(v.remaining, take)
            left = _MONEY.subtract(left, take)
            uses.append((v.voucher_id, take))
        voucher_part = _MONEY.subtract(amount, left)
        cash_part = min(acct.cash, left)
        acct.cash = _MONEY.subtract(acct.cash, cash_part)
        debt_added = _MONEY.subtract(left, cash_part)
        acct.debt = _MONEY.add(acct.debt, debt_added)
        acct.settled.add(hour)
        self.out.closed_hours.add((account_id, hour_str(hour)))
        self.order += 1
        self.out.settlements.append(
            {
                "account_id": account_id,
                "hour": hour_str(hour),
                "kind": kind,
                "amount": amount,
                "voucher_part": voucher_part,
                "cash_part": cash_part,
                "debt_added": debt_added,
                "debt_after": acct.debt,
                "balance_after": acct.cash,
                "voucher_uses": uses,
                "at": acct.clock_ns,
                "order": self.order,
            }
        )
        self.status(account_id, acct, f"{kind} {hour_str(hour)}")

    def status(self, account_id: str, acct: _Account, cause: str) -> None:
        now = "arrears" if acct.debt > 0 else "active"
        if now != acct.status:
            acct.status = now
            self.order += 1
            self.out.status_changes.append((account_id, now))
            self.out.status_log.append({"account_id": account_id, "status": now, "at": acct.clock_ns, "cause": cause, "order": self.order})

    def summaries(self) -> None:
        for account_id, acct in self.accounts.items():
            self.out.clocks[account_id] = acct.clock_ns
            self.out.accounts[account_id] = {
                "account_id": account_id,
                "status": acct.status,
                "cash_balance": acct.cash,
                "debt": acct.debt,
                "vouchers": [
                    {
                        "voucher_id": v.voucher_id,
                        "remaining": v.remaining,
                        "expires_at": None if v.expires_ns is None else ts_str(v.expires_ns),
                    }
                    for v in acct.vouchers.values()
                ],
                "free_tokens_left": max(self.cat.free_quota - acct.free_used, 0),
                "last_settled_hour": hour_str(max(acct.settled)) if acct.settled else None,
            }

    def usage(self, account_id: str, acct: _Account, body: dict[str, Any], ts: int) -> None:
        cat = self.cat
        event_id = body["event_id"]
        plugins = {name: int(n) for name, n in (body.get("plugins") or {}).items() if n != 0}
        model = cat.models.get(body["model"])
        if model is None:
            return self.reject(account_id, event_id, "unknown_model")
        if any(name not in cat.plugins for name in plugins):
            return self.reject(account_id, event_id, "unknown_plugin")
        price = _price_at(model["versions"], ts)
        plugin_prices = {name: _price_at(cat.plugins[name], ts) for name in plugins}
        if price is None or any(p is None for p in plugin_prices.values()):
            return self.reject(account_id, event_id, "no_price_in_force")
        tin, tout = int(body["input_tokens"]), int(body["output_tokens"])
        max_input = cat.global_max_input if model["max_input"] is None else min(model["max_input"], cat.global_max_input)
        if tin > max_input:
            return self.reject(account_id, event_id, "input_limit_exceeded")
        if model["context"] is not None and tin + tout > model["context"]:
            return self.reject(account_id, event_id, "context_limit_exceeded")
        if model["whitelist_only"] and body["model"] not in acct.whitelist:
            return self.reject(account_id, event_id, "not_whitelisted")
        key = acct.keys.get(body["api_key_id"])
        if key is None or (key.revoked_ns is not None and key.revoked_ns <= ts):
            return self.reject(account_id, event_id, "invalid_api_key")

        billable = body.get("channel", "api") == "api"
        if billable:
            left = cat.free_quota - acct.free_used
            free_in = min(tin, left)
            free_out = min(tout, left - free_in)
            acct.free_used += free_in + free_out
            if free_in + free_out > 0 and (free_in < tin or free_out < tout):
                self.out.straddles.append((account_id, event_id))
            billed_in, billed_out = tin - free_in, tout - free_out
            amount = _MONEY.add(_MONEY.multiply(price[0], billed_in), _MONEY.multiply(price[1], billed_out))
        else:
            free_in = free_out = billed_in = billed_out = 0
            amount = Decimal(0)
        self.out.free_tokens_used[account_id] = acct.free_used
        self.out.billed_calls += 1
        hour = hour_str(ts)
        key_id = body["api_key_id"]
        line = self.out.bills.setdefault((account_id, hour, key_id, body["model"]), _empty_line())
        line["requests"] += 1
        line["input_tokens"] += tin
        line["output_tokens"] += tout
        line["free_tokens"] += free_in + free_out
        line["billed_input_tokens"] += billed_in
        line["billed_output_tokens"] += billed_out
        line["amount"] = _MONEY.add(line["amount"], amount)
        owed = amount
        for name, units in plugins.items():
            pline = self.out.bills.setdefault((account_id, hour, key_id, "plugin:" + name), _empty_line())
            pline["requests"] += 1
            pline["quantity"] += units
            if billable:
                charge = _MONEY.multiply(plugin_prices[name][0], units)
                pline["amount"] = _MONEY.add(pline["amount"], charge)
                owed = _MONEY.add(owed, charge)
        h = hour_start_ns(ts)  # the hour has activity (even at 0): it will close, or adjust
        acct.pending[h] = _MONEY.add(acct.pending.get(h, Decimal(0)), owed)


def expected(lines: Iterable[str], catalog_path: str | Path | None = None, grace_minutes: int | None = None) -> Expected:
    """Expected bills, rejections, duplicate count and settlement for records published in this
    order. `grace_minutes` overrides the catalog's `settlement_grace_minutes` (default 10)."""
    catalog = OracleCatalog.load(catalog_path)
    if grace_minutes is not None:
        catalog.grace_minutes = int(grace_minutes)
    oracle = _Oracle(catalog)
    for line in lines:
        oracle.feed(line)
    for acct_id, acct in oracle.accounts.items():
        oracle.out.free_tokens_used.setdefault(acct_id, acct.free_used)
    oracle.summaries()
    return oracle.out
