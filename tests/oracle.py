"""An independent computation of the expected bills, rejections and duplicate count.

Written from ../shared/spec/BILLING_RULES.md (§1-§8, §10) and docs/interpretations.md only; it
imports nothing from the `pipeline` package so that a bug there cannot hide in both. It reads
the catalog JSON file itself and validates records with the JSON Schemas in schemas/records/
(compiled with fastjsonschema) plus its own RFC 3339 check.

    expected(lines, catalog_path=None) -> Expected

`Expected.bills` maps (account_id, hour, api_key_id, item) to the bill-line fields of the
contract (`requests`, `input_tokens`, `output_tokens`, `free_tokens`, `billed_input_tokens`,
`billed_output_tokens`, `quantity` as int, `amount` as Decimal); `hour` is the start of the
call's hour in +08:00, e.g. "2024-06-07T10:00:00+08:00". `Expected.rejections` lists one
(account_id, event_id or "", reason) per rejected delivery, in input order.
`Expected.duplicates` counts duplicate deliveries. Rate windows are not computed.

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


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


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
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(timedelta(minutes=offset_min)))
    except ValueError:  # month 13, 31 June, second 60, ...
        return None
    delta = moment - _EPOCH
    whole = delta.days * 86_400 + delta.seconds
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
    if not isinstance(kind, str) or kind not in KINDS:
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
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# the fold


@dataclass
class _Key:
    revoked_ns: int | None = None


@dataclass
class _Account:
    seen: dict[str, str] = field(default_factory=dict)  # identity -> canonical payload
    keys: dict[str, _Key] = field(default_factory=dict)
    whitelist: set[str] = field(default_factory=set)
    free_used: int = 0


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


def _empty_line() -> dict[str, Any]:
    line: dict[str, Any] = {f: 0 for f in LINE_INT_FIELDS}
    line["amount"] = Decimal(0)
    return line


class _Oracle:
    def __init__(self, catalog: OracleCatalog):
        self.cat = catalog
        self.accounts: dict[str, _Account] = {}
        self.out = Expected()
        self.line = ""

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
        # credit.* and limits.set change no bill line

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
        for name, units in plugins.items():
            pline = self.out.bills.setdefault((account_id, hour, key_id, "plugin:" + name), _empty_line())
            pline["requests"] += 1
            pline["quantity"] += units
            if billable:
                pline["amount"] = _MONEY.add(pline["amount"], _MONEY.multiply(plugin_prices[name][0], units))


def expected(lines: Iterable[str], catalog_path: str | Path | None = None) -> Expected:
    """Expected bills, rejections and duplicate count for records published in this order."""
    oracle = _Oracle(OracleCatalog.load(catalog_path))
    for line in lines:
        oracle.feed(line)
    for acct_id, acct in oracle.accounts.items():
        oracle.out.free_tokens_used.setdefault(acct_id, acct.free_used)
    return oracle.out
