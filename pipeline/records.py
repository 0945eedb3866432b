"""Input records: bytes from the topic -> a validated, typed record, or an `Invalid` with the reason.

The JSON Schemas in schemas/records/ are the contract's record formats; this module only
compiles them and adds what a schema cannot say (a timestamp that is a real instant).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

import fastjsonschema
import orjson

from pipeline.timestamps import TimestampError, parse_ts
from pipeline.tuples import namedtuple_of

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "records"
USAGE = "usage"
ACCOUNT_KINDS = (
    "api_key.created",
    "api_key.revoked",
    "credit.recharge",
    "credit.voucher",
    "limits.set",
    "whitelist.add",
    "whitelist.remove",
    "clock.tick",
    "rebill.lines",
)
KINDS = (USAGE, *ACCOUNT_KINDS)
MAX_RECORD_BYTES = 64 * 1024
EARLIEST_US = 946_684_800 * 1_000_000  # 2000-01-01T00:00:00Z
LATEST_US = 4_102_444_800 * 1_000_000  # 2100-01-01T00:00:00Z


class Usage(NamedTuple):
    """One call, ready to price. The record types are NamedTuples: immutable, and built several
    times faster than frozen dataclasses (one per record, so it shows in the throughput)."""

    account_id: str
    ts_us: int
    identity: str  # the event_id
    digest: str  # of the canonical payload: tells a duplicate from a conflicting one
    raw: str
    event_id: str
    api_key_id: str
    model: str
    input_tokens: int
    output_tokens: int
    channel: str
    plugins: tuple[tuple[str, int], ...]
    kind: str = USAGE


class AccountRecord(NamedTuple):
    """Key, credit, limit and whitelist records: they change the account, never a bill directly."""

    kind: str
    account_id: str
    ts_us: int
    identity: str
    digest: str
    raw: str
    fields: dict[str, Any]


class Invalid(NamedTuple):
    """A record that breaks the schema: kept and rejected as `invalid_schema`, never billed."""

    account_id: str
    identity: str  # digest of the bytes as received
    raw: str
    detail: str
    event_id: str = ""
    ts_us: int | None = None
    kind: str = "invalid"


Record = Usage | AccountRecord | Invalid


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{kind}.json").read_text(encoding="utf-8"))
    return schema


_USAGE = _schema(USAGE)
_USAGE_KEYS = frozenset(_USAGE["properties"])
_USAGE_REQUIRED = frozenset(_USAGE["required"])
_USAGE_NAMES = ("account_id", "api_key_id", "model")
_TIMESTAMP = re.compile("(?a)" + re.sub(r"(?<!\\)\$", r"\\Z", _USAGE["properties"]["timestamp"]["pattern"]))  # '$' as fastjsonschema reads it
_BREAKDOWN_KEYS = frozenset(_USAGE["properties"]["input_breakdown"]["properties"])
_MAX_TOKENS = _USAGE["properties"]["input_tokens"]["maximum"]
_MAX_PLUGINS = _USAGE["properties"]["plugins"]["maxProperties"]
_MAX_PLUGIN_UNITS = _USAGE["properties"]["plugins"]["additionalProperties"]["maximum"]


def plain_usage(body: dict[str, Any]) -> bool:
    """True only for a usage body that schemas/records/usage.json accepts, decided by hand in about
    a tenth of the generic validator's time (the usage kind is nearly every record). It is
    stricter than the schema (a count must be a JSON integer, not 2.0): False sends the body to
    the generic validator, which accepts it or says what is wrong. Its limits are read from the
    schema; a test checks it never accepts what the schema refuses."""
    keys = body.keys()
    if not (_USAGE_REQUIRED <= keys <= _USAGE_KEYS):
        return False
    for name in _USAGE_NAMES:
        value = body[name]
        if type(value) is not str or not 0 < len(value) <= 128:
            return False
    event_id, timestamp = body["event_id"], body["timestamp"]
    if type(event_id) is not str or not 0 < len(event_id) <= 128 or event_id[0] == "#":
        return False
    if type(timestamp) is not str or _TIMESTAMP.search(timestamp) is None:
        return False
    if not (_count(body["input_tokens"], _MAX_TOKENS) and _count(body["output_tokens"], _MAX_TOKENS)):
        return False
    if body.get("type", USAGE) != USAGE or body.get("channel", "api") not in ("api", "console"):
        return False
    if "plugins" in body and not _plain_plugins(body["plugins"]):
        return False
    breakdown = body.get("input_breakdown", {})
    return type(breakdown) is dict and _BREAKDOWN_KEYS.issuperset(breakdown) and all(
        _count(v, _MAX_TOKENS) for v in breakdown.values())


def _count(value: Any, maximum: int) -> bool:
    return type(value) is int and 0 <= value <= maximum


def _plain_plugins(plugins: Any) -> bool:
    return type(plugins) is dict and len(plugins) <= _MAX_PLUGINS and all(
        type(name) is str and 0 < len(name) <= 64 and _count(units, _MAX_PLUGIN_UNITS) for name, units in plugins.items())


@lru_cache(maxsize=None)
def _validator(kind: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(_ascii_patterns(_schema(kind)))


def _ascii_patterns(schema: Any) -> Any:
    """JSON Schema patterns are ECMA-262 regexes, where \\d is [0-9]; Python's re would also match
    other scripts' digits (an amount of "١٠٠" would pass), so compile every pattern in ASCII mode."""
    if isinstance(schema, dict):
        return {k: "(?a)" + v if k == "pattern" and isinstance(v, str) else _ascii_patterns(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_ascii_patterns(v) for v in schema]
    return schema


def canonical_digest(body: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def parse_record(raw: bytes, key_account: str = "") -> Record:
    """Decode and validate one record. Never raises: bad input becomes `Invalid` with a reason."""
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_RECORD_BYTES:
        return _invalid(raw, text, key_account, f"record is {len(raw)} bytes, over the {MAX_RECORD_BYTES} limit")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _invalid(raw, text, key_account, f"not JSON: {exc}")
    if not isinstance(body, dict):
        return _invalid(raw, text, key_account, f"a record is a JSON object, got {type(body).__name__}")
    return parse_body(body, raw, text, key_account)


def parse_body(body: dict[str, Any], raw: bytes, text: str, key_account: str = "") -> Record:
    kind = body.get("type", USAGE)
    account: str = _text(body, "account_id", key_account)
    event_id: str = _text(body, "event_id", "")
    if kind not in KINDS:
        # repr only a string: the repr of a deeply nested array or object raises RecursionError
        shown = repr(kind) if isinstance(kind, str) else f"of JSON type {type(kind).__name__}"
        return _invalid(raw, text, account, f"unknown record type {shown}", event_id)
    plain = kind == USAGE and plain_usage(body)
    try:
        if not plain:
            _validator(kind)(body)
        ts_us = _in_range(parse_ts(body["timestamp"]), body["timestamp"])
        if "expires_at" in body:
            _in_range(parse_ts(body["expires_at"]), body["expires_at"])
        for line in body.get("lines", ()) if kind == "rebill.lines" else ():
            _in_range(parse_ts(line["hour"]), line["hour"])
    except fastjsonschema.JsonSchemaValueException as exc:
        return _invalid(raw, text, account, f"{kind}: {exc.message}", event_id)
    except TimestampError as exc:
        return _invalid(raw, text, account, f"{kind}: {exc}", event_id)
    if key_account and account != key_account:
        return _invalid(raw, text, account, f"account_id {account!r} differs from the message key {key_account!r}", event_id)
    if not plain:
        body = _integral(body)
    if kind == USAGE:
        return _usage(body, account, ts_us, text)
    normal = dict(body, type=kind)
    digest = canonical_digest(normal)
    fields = {k: v for k, v in body.items() if k not in ("type", "account_id", "timestamp")}
    return namedtuple_of(AccountRecord, kind, account, ts_us, f"#{kind}:{digest}", digest, text, fields)  # '#': never an event_id


def _text(body: dict[str, Any], name: str, otherwise: str) -> str:
    """A field that should be a string, for naming the record in a rejection."""
    value = body.get(name)
    return value if isinstance(value, str) else otherwise


def _usage(body: dict[str, Any], account: str, ts_us: int, text: str) -> Usage:
    normal = dict(body, type=USAGE)
    channel = normal.setdefault("channel", "api")
    plugins = body.get("plugins")
    normal["plugins"] = {name: n for name, n in plugins.items() if n} if plugins else {}
    event_id = body["event_id"]
    return namedtuple_of(Usage, account, ts_us, event_id, canonical_digest(normal), text, event_id, body["api_key_id"],
                         body["model"], body["input_tokens"], body["output_tokens"], channel,
                         tuple(sorted(normal["plugins"].items())), USAGE)


def _in_range(ts_us: int, text: str) -> int:
    """Refuse instants the bill tables cannot hold (and no real call has)."""
    if not EARLIEST_US <= ts_us < LATEST_US:
        raise TimestampError(f"timestamp {text!r} is outside 2000-01-01..2100-01-01")
    return ts_us


def _integral(body: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema counts 2.0 as an integer; the schemas hold no other numbers, so after validation
    every float is a whole count: make it an int (Decimal * float would crash, and 2.0 and 2 are
    one payload). Records hold floats at the top level or one object deep (plugins, breakdown)."""
    if not any(type(v) is float or (type(v) is dict and any(type(x) is float for x in v.values())) for v in body.values()):
        return body
    return {k: int(v) if type(v) is float else ({n: int(x) if type(x) is float else x for n, x in v.items()} if type(v) is dict else v)
            for k, v in body.items()}


def _invalid(raw: bytes, text: str, account: str, detail: str, event_id: str = "") -> Invalid:
    identity = "raw:" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    return namedtuple_of(Invalid, account or "", identity, text, detail, event_id, None, "invalid")
