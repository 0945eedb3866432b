"""Usage records decoded and checked in C: msgspec types generated from schemas/records/usage.json.

Nearly every record is a usage record, and in Python its decode and schema check were the largest
share of a worker's time (docs/performance.md). msgspec reads the bytes straight into a typed
struct and checks every constraint of the schema as it reads. The types are generated from the
schema file when this module loads, so the schema stays the one statement of the format: a
keyword the generator does not know is an error at import, never a rule silently skipped.

It is the fast way, not the judge. records.parse_record sends whatever it refuses (another record
type, a count written 2.0, any break of the schema) to the generic validator, which accepts it or
says what is wrong. A test checks that it accepts nothing the schema refuses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "records" / "usage.json"
_ANNOTATIONS = frozenset({"description", "title", "$schema", "$id"})
_STRING = frozenset({"type", "minLength", "maxLength", "pattern"})
_INTEGER = frozenset({"type", "minimum", "maximum"})
_STRUCT = frozenset({"type", "properties", "required", "additionalProperties"})
_MAP = frozenset({"type", "additionalProperties", "maxProperties", "propertyNames"})


class SchemaNotSupported(ValueError):
    """The usage schema uses a keyword the generator cannot turn into a msgspec constraint."""


def python_pattern(pattern: str) -> str:
    """A JSON Schema pattern (ECMA-262) as Python's re reads it the way fastjsonschema does: ASCII
    classes (\\d is [0-9], not other scripts' digits) and `$` as the very end, not before a
    trailing newline."""
    return "(?a)" + re.sub(r"(?<!\\)\$", r"\\Z", pattern)


def struct_type(name: str, schema: dict[str, Any], patterns_checked_after: frozenset[str] = frozenset()) -> Any:
    """An object with known properties and no others -> a Struct; absent optional fields are UNSET
    (absent and empty are different payloads, and the digest tells them apart). The patterns of
    the properties in `patterns_checked_after` are left to the caller."""
    _only(name, schema, _STRUCT)
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        raise SchemaNotSupported(f"{name}: only objects with additionalProperties false become structs")
    required = set(schema.get("required", ()))
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for prop, sub in sorted(schema["properties"].items()):  # sorted: the canonical form needs no sort
        if prop in patterns_checked_after:
            sub = {k: v for k, v in sub.items() if k != "pattern"}
        kind = field_type(f"{name}.{prop}", sub)
        fields.append((prop, kind) if prop in required else (prop, kind | msgspec.UnsetType, msgspec.UNSET))
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)


def field_type(name: str, schema: dict[str, Any]) -> Any:
    if "const" in schema:
        _only(name, schema, frozenset({"const"}))
        return Literal[schema["const"]]
    if "enum" in schema:
        _only(name, schema, frozenset({"enum"}))
        return Literal[tuple(schema["enum"])]
    kind = schema.get("type")
    if kind == "string":
        return _string(name, schema)
    if kind == "integer":
        _only(name, schema, _INTEGER)
        return Annotated[int, _meta(ge=schema.get("minimum"), le=schema.get("maximum"))]
    if kind == "object" and "properties" in schema:
        return struct_type(name.rsplit(".", 1)[-1], schema)
    if kind == "object":
        return _map(name, schema)
    raise SchemaNotSupported(f"{name}: type {kind!r} is not supported")


def _string(name: str, schema: dict[str, Any]) -> Any:
    _only(name, schema, _STRING)
    pattern = schema.get("pattern")
    return Annotated[
        str,
        _meta(
            min_length=schema.get("minLength"),
            max_length=schema.get("maxLength"),
            pattern=python_pattern(pattern) if pattern is not None else None,
        ),
    ]


def _map(name: str, schema: dict[str, Any]) -> Any:
    """additionalProperties with a schema: a dict of those values, keys bounded by propertyNames."""
    _only(name, schema, _MAP)
    names = {"type": "string", **schema.get("propertyNames", {})}
    key = _string(f"{name} (property names)", names)
    value = field_type(f"{name} (values)", schema["additionalProperties"])
    return Annotated[dict[key, value], _meta(max_length=schema.get("maxProperties"))]  # type: ignore[valid-type]


def _meta(**limits: Any) -> msgspec.Meta:
    return msgspec.Meta(**{k: v for k, v in limits.items() if v is not None})


def _only(name: str, schema: dict[str, Any], known: frozenset[str]) -> None:
    unknown = set(schema) - known - _ANNOTATIONS
    if unknown:
        raise SchemaNotSupported(f"{name}: keyword(s) {sorted(unknown)} not supported by the native decoder")


# msgspec checks a pattern by a call into Python's re per value: for these two, more than half of
# the decode. records._native_usage checks them itself, by tests with nothing the pattern refuses:
# the timestamp by timestamps.quick_us (which reads only that pattern's shape), the event id by its
# first character.
PATTERNS_CHECKED_AFTER = frozenset({"timestamp", "event_id"})
USAGE_SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
UsageCall = struct_type("UsageCall", USAGE_SCHEMA, PATTERNS_CHECKED_AFTER)
DecodeError = msgspec.DecodeError  # a ValidationError (a schema break) is one too
UNSET = msgspec.UNSET  # an optional field the record left out
_DECODER = msgspec.json.Decoder(UsageCall)
# A struct's fields in definition order, which is sorted (struct_type), and maps sorted by key:
# the same bytes as order="sorted", without sorting a struct's fields at every encode.
_ENCODER = msgspec.json.Encoder(order="deterministic")


def decode(raw: bytes) -> Any:
    """The UsageCall in `raw`, or DecodeError for anything else (which is not always invalid)."""
    return _DECODER.decode(raw)


def canonical(call: Any, channel: str, plugins: dict[str, int], timestamp: str) -> bytes:
    """The normal payload as compact JSON with sorted keys, byte for byte what orjson's
    OPT_SORT_KEYS writes for the same dict (tests): digests stay what they were. `timestamp` is
    the instant's one spelling (timestamps.canonical_ts)."""
    return _ENCODER.encode(msgspec.structs.replace(call, type="usage", channel=channel, plugins=plugins, timestamp=timestamp))
