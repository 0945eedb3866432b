"""Input records: bytes from the topic -> a validated, typed record, or an `Invalid` with the reason.

The JSON Schemas in schemas/records/ are the contract's record formats; this module only
compiles them and adds what a schema cannot say (a timestamp that is a real instant). Usage
records, nearly all of them, are read first by the native decoder generated from the same schema
(usage_decoder.py); whatever it refuses takes the generic validator, which says why.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

import fastjsonschema
import orjson

from pipeline.core import control, usage_decoder
from pipeline.core.facts import INVALID_SCHEMA, UNAUTHORIZED
from pipeline.core.timestamps import TimestampError, canonical_ts, parse_ts, quick_us
from pipeline.core.tuples import namedtuple_of

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "records"
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
CONTROL_KINDS = control.CONTROL_KINDS  # written by the pipeline's own tools only, signed (control.py)
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
    identity_hash: int  # record_hash(identity): the worker looks the identity up and writes it by this key
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
    identity_hash: int  # record_hash(identity)


INVALID_KIND = "invalid"  # the kind an Invalid is archived under (raw_records.kind)


class Invalid(NamedTuple):
    """A record refused before the fold: kept and rejected with `reason` (`invalid_schema`; a
    control record without a valid signature, `unauthorized`), never billed."""

    account_id: str
    identity: str  # digest of the bytes as received
    raw: str
    detail: str
    event_id: str = ""
    ts_us: int | None = None
    kind: str = INVALID_KIND
    reason: str = INVALID_SCHEMA


Record = Usage | AccountRecord | Invalid


# Records built by name (tests/unit/core/test_factories.py ties each builder to its fields).
def new_usage(
    *,
    account_id: str,
    ts_us: int,
    identity: str,
    digest: str,
    raw: str,
    event_id: str,
    api_key_id: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    channel: str,
    plugins: tuple[tuple[str, int], ...],
    identity_hash: int,
    kind: str,
) -> Usage:
    """A Usage from its fields by name, every field given."""
    return namedtuple_of(
        Usage,
        account_id,
        ts_us,
        identity,
        digest,
        raw,
        event_id,
        api_key_id,
        model,
        input_tokens,
        output_tokens,
        channel,
        plugins,
        identity_hash,
        kind,
    )


def new_account_record(
    *, kind: str, account_id: str, ts_us: int, identity: str, digest: str, raw: str, fields: dict[str, Any], identity_hash: int
) -> AccountRecord:
    """An AccountRecord from its fields by name, every field given."""
    return namedtuple_of(AccountRecord, kind, account_id, ts_us, identity, digest, raw, fields, identity_hash)


def new_invalid(
    *, account_id: str, identity: str, raw: str, detail: str, event_id: str, ts_us: int | None, kind: str, reason: str
) -> Invalid:
    """An Invalid from its fields by name, every field given."""
    return namedtuple_of(Invalid, account_id, identity, raw, detail, event_id, ts_us, kind, reason)


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{kind}.json").read_text(encoding="utf-8"))
    return schema


@lru_cache(maxsize=None)
def _validator(kind: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(_ascii_patterns(_schema(kind)))


def compile_validators() -> None:
    """Compile every record type's schema check now (about 25 ms): a worker does it at startup so
    that its first batch does not (it is compiled on first use otherwise)."""
    for kind in KINDS:
        _validator(kind)


def _ascii_patterns(schema: Any) -> Any:
    """JSON Schema patterns are ECMA-262 regexes, where \\d is [0-9]; Python's re would also match
    other scripts' digits (an amount of "١٠٠" would pass), so compile every pattern in ASCII mode."""
    if isinstance(schema, dict):
        return {k: "(?a)" + v if k == "pattern" and isinstance(v, str) else _ascii_patterns(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_ascii_patterns(v) for v in schema]
    return schema


def canonical_digest(body: dict[str, Any]) -> str:
    return _digest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


# Fresh BLAKE2b states to copy, once per record each: a copy costs about 0.35 us against 0.6 us
# for a new hasher, whose parameters are parsed and set up every time; the hashes are the same.
_BLAKE2B_16 = hashlib.blake2b(digest_size=16)
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)


def _digest(canonical: bytes) -> str:
    hasher = _BLAKE2B_16.copy()
    hasher.update(canonical)
    return hasher.hexdigest()


def record_hash(record_id: str) -> int:
    """64-bit key of an identity for `seen_records` lookups (cheap to bind and to index); the full
    record_id still decides a match. Stored in the table: never change the function."""
    hasher = _BLAKE2B_8.copy()
    hasher.update(record_id.encode("utf-8"))
    return int.from_bytes(hasher.digest(), "little")


# Why a publisher's record in a message without a key is refused where the input topic has more than
# one partition: Kafka keeps order only within a partition, and a producer that does not key by
# account spreads an account's records over all of them. Folded anyway, a call could come before
# the key it uses or the recharge it needs: measured on the demo workload (3,000 records, 4
# partitions), 162 of 1,499 bill lines and 160 rejections differed from one ordered run, silently.
UNKEYED = (
    "the message has no key; the input topic has several partitions and only an account's own "
    "partition keeps its records in order, so every record must be sent with its account_id as the "
    "message key (docs/gateway.md). Kept here: publish it again with the key"
)


REFUSED_ON_ARRIVAL = (
    "refused when it arrived for its message (no key on a topic of several partitions, another "
    "account's key, or a partition its key does not map to), which the archive does not keep; a "
    "replay refuses it again"
)


def set_aside(raw: bytes, record: Record, partition: int, belongs: int) -> Invalid:
    """A record of a message on a partition its key does not map to, which an operator set aside
    (BILLING_SET_ASIDE) instead of letting it stop the worker: refused and kept, never folded
    (its account's order is on another partition)."""
    detail = (
        f"on partition {partition} of the input topic, but its key belongs to partition {belongs}: set aside "
        "by the operator (BILLING_SET_ASIDE) instead of stopping the worker. Kept here: publish it again "
        "with its account_id as the key and Kafka's default partitioner (docs/gateway.md)"
    )
    event_id = record.event_id if isinstance(record, (Usage, Invalid)) else ""
    return _invalid(raw, raw.decode("utf-8", errors="replace"), record.account_id, detail, event_id)


def refused_on_arrival(raw: bytes, account: str) -> Invalid:
    """A replay's verdict on a record archived as invalid that parses now: what refused it was its
    message, not its bytes (`require_key`, the key check), so only the archived kind still says so.
    Billing it in a replay would bill it in partition order, which is not its account's order,
    beside its rejection."""
    return _invalid(raw, raw.decode("utf-8", errors="replace"), account, REFUSED_ON_ARRIVAL)


def parse_record(
    raw: bytes | None, key_account: str = "", control_key: bytes | None = None, trust_control: bool = False, require_key: bool = False
) -> Record:
    """Decode and validate one record. Never raises: bad input becomes `Invalid` with a reason.
    `control_key` authenticates control records (control.py); without it none is accepted.
    `require_key`: a publisher's record without `key_account` is refused (UNKEYED).
    `trust_control`: a replay of the raw archive, where a control record archived under its own
    type was authenticated when it arrived (a forged one was archived as invalid)."""
    if raw is None:  # its own identity: an empty value is another mistake
        return _invalid(b"", "", key_account, "a message with a null value (a tombstone) is not a record")._replace(
            identity="raw:tombstone"
        )
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_RECORD_BYTES:
        return _invalid(raw, text, key_account, f"record is {len(raw)} bytes, over the {MAX_RECORD_BYTES} limit")
    usage = _native_usage(raw, text, key_account) if key_account or not require_key else None
    if usage is not None:
        return usage
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _invalid(raw, text, key_account, f"not JSON: {exc}")
    if not isinstance(body, dict):
        return _invalid(raw, text, key_account, f"a record is a JSON object, got {type(body).__name__}")
    return parse_body(body, raw, text, key_account, control_key, trust_control, require_key)


def parse_body(
    body: dict[str, Any],
    raw: bytes,
    text: str,
    key_account: str = "",
    control_key: bytes | None = None,
    trust_control: bool = False,
    require_key: bool = False,
) -> Record:
    kind = body.get("type", USAGE)
    account: str = _text(body, "account_id", key_account)
    event_id: str = _text(body, "event_id", "")
    if kind == control.BARRIER:  # a worker takes a signed barrier before parsing: this one is not
        return _unauthorized(raw, text, account, kind)
    if kind not in KINDS:
        # repr only a string: the repr of a deeply nested array or object raises RecursionError
        shown = repr(kind) if isinstance(kind, str) else f"of JSON type {type(kind).__name__}"
        return _invalid(raw, text, account, f"unknown record type {shown}", event_id)
    try:
        _validator(kind)(body)
        ts_us = _in_range(parse_ts(body["timestamp"]), body["timestamp"])
        expires_us = _in_range(parse_ts(body["expires_at"]), body["expires_at"]) if "expires_at" in body else 0
        for line in body.get("lines", ()) if kind == "rebill.lines" else ():
            _in_range(parse_ts(line["hour"]), line["hour"])
    except fastjsonschema.JsonSchemaValueException as exc:
        return _invalid(raw, text, account, f"{kind}: {exc.message}", event_id)
    except TimestampError as exc:
        return _invalid(raw, text, account, f"{kind}: {exc}", event_id)
    if kind in CONTROL_KINDS and not trust_control and not control.verify(body, control_key):
        return _unauthorized(raw, text, account, kind)
    if key_account and account != key_account:
        return _invalid(raw, text, account, f"account_id {account!r} differs from the message key {key_account!r}", event_id)
    if require_key and not key_account and kind not in CONTROL_KINDS:  # the pipeline's own tools place theirs
        return _invalid(raw, text, account, UNKEYED, event_id)
    body = _integral(body)
    if kind == USAGE:
        return _schema_checked_usage(body, raw, text, account, ts_us)
    normal = dict(body, type=kind, timestamp=canonical_ts(body["timestamp"], ts_us))  # one spelling per instant: one payload
    if "expires_at" in body:
        normal["expires_at"] = canonical_ts(body["expires_at"], expires_us)
    digest = canonical_digest(normal)
    fields = {k: v for k, v in body.items() if k not in ("type", "account_id", "timestamp")}
    identity = f"#{kind}:{digest}"  # '#': never an event_id
    return new_account_record(
        kind=kind,
        account_id=account,
        ts_us=ts_us,
        identity=identity,
        digest=digest,
        raw=text,
        fields=fields,
        identity_hash=record_hash(identity),
    )


def _text(body: dict[str, Any], name: str, otherwise: str) -> str:
    """A field that should be a string, for naming the record in a rejection."""
    value = body.get(name)
    return value if isinstance(value, str) else otherwise


def _native_usage(raw: bytes, text: str, key_account: str) -> Usage | None:
    """The usage record in `raw` by the native decoder, or None: then the generic path decides
    (another type, a count written 2.0, an unusual timestamp, a break of the schema, a key that
    names another account), and says why when it refuses."""
    try:
        call = usage_decoder.decode(raw)
    except usage_decoder.DecodeError:
        return None
    ts_us = quick_us(call.timestamp)  # -1 also when the timestamp breaks the schema's pattern (usage_decoder)
    event_id: str = call.event_id
    if not EARLIEST_US <= ts_us < LATEST_US or event_id.startswith("#") or (key_account and call.account_id != key_account):
        return None
    return _usage(call, ts_us, text)


def _schema_checked_usage(body: dict[str, Any], raw: bytes, text: str, account: str, ts_us: int) -> Record:
    """A usage body the generic validator accepted and made integral, in the one normal form."""
    try:
        call = usage_decoder.decode(orjson.dumps(body))
    except usage_decoder.DecodeError as exc:  # the generated types and the schema disagree: say so, never bill
        return _invalid(raw, text, account, f"usage: the native decoder refuses what the schema accepts: {exc}", body["event_id"])
    return _usage(call, ts_us, text)


def _usage(call: Any, ts_us: int, text: str) -> Usage:
    """A call in its normal form, which its digest is taken of: type and channel written out
    (channel "api" when absent), plugins used zero times left out (they cost nothing)."""
    channel: str = "api" if call.channel is usage_decoder.UNSET else call.channel
    plugins: dict[str, int] = {} if call.plugins is usage_decoder.UNSET else {name: n for name, n in call.plugins.items() if n}
    digest = _digest(usage_decoder.canonical(call, channel, plugins, canonical_ts(call.timestamp, ts_us)))
    event_id: str = call.event_id
    return new_usage(
        account_id=call.account_id,
        ts_us=ts_us,
        identity=event_id,
        digest=digest,
        raw=text,
        event_id=event_id,
        api_key_id=call.api_key_id,
        model=call.model,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        channel=channel,
        plugins=tuple(sorted(plugins.items())),
        identity_hash=record_hash(event_id),
        kind=USAGE,
    )


def _in_range(ts_us: int, text: str) -> int:
    """Refuse instants the bill tables cannot hold (and no real call has)."""
    if not EARLIEST_US <= ts_us < LATEST_US:
        raise TimestampError(f"timestamp {text!r} is outside 2000-01-01..2100-01-01")
    return ts_us


def _integral(body: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema counts 2.0 as an integer; the schemas hold no other numbers, so after validation
    every float is a whole count: make it an int at any depth (Decimal * float would crash, an
    integer column refuses a float, and 2.0 and 2 are one payload)."""
    whole: dict[str, Any] = _whole(body)
    return whole


def _whole(value: Any) -> Any:
    if type(value) is float:
        return int(value)
    if type(value) is dict:
        return {k: _whole(v) for k, v in value.items()}
    if type(value) is list:
        return [_whole(v) for v in value]
    return value


def _invalid(raw: bytes, text: str, account: str, detail: str, event_id: str = "", reason: str = INVALID_SCHEMA) -> Invalid:
    identity = "raw:" + _digest(raw)
    return new_invalid(
        account_id=account or "",
        identity=identity,
        raw=text,
        detail=detail,
        event_id=event_id,
        ts_us=None,
        kind=INVALID_KIND,
        reason=reason,
    )


def _unauthorized(raw: bytes, text: str, account: str, kind: str) -> Invalid:
    detail = (
        f"{kind} is a control record: only the pipeline's own tools write it, signed with the control key "
        "(BILLING_CONTROL_KEY); this one has no valid signature"
    )
    return _invalid(raw, text, account, detail, reason=UNAUTHORIZED)
