"""The native usage decoder (usage_decoder.py, msgspec types generated from the usage schema) is
a fast way around the generic JSON Schema validator: it may send a valid record the slow way,
but it must never let through a record the schema refuses, and the record it builds, digest
included, must be the one the generic path builds."""

from __future__ import annotations

import json
import re
from typing import Any

import fastjsonschema
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.core.records as records
from pipeline.core import usage_decoder
from pipeline.core.records import Invalid, Usage, _validator, canonical_digest, parse_record
from pipeline.core.timestamps import format_ts, quick_us
from pipeline.demo.workload import generate
from tests.hostile import hostile_corpus

BASE: dict[str, Any] = {
    "account_id": "acct-1",
    "timestamp": "2024-09-18T10:00:00+08:00",
    "event_id": "ev-1",
    "api_key_id": "k-1",
    "model": "xingchen-plus",
    "input_tokens": 10,
    "output_tokens": 5,
}
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([10**9, 10**9 + 1, 10**6, 10**6 + 1, 2.0, 2.5, -0.0, 2**64 - 1]),
    st.text(max_size=3),
    st.sampled_from(
        [
            "",
            "#x",
            "a" * 128,
            "a" * 129,
            "p" * 64,
            "p" * 65,
            "usage",
            "api",
            "console",
            "2024-09-18T10:00:00Z\n",
            "2024-09-18 10:00:00z",
            "２０２４-09-18T10:00:00Z",
            "2024-02-30T10:00:00Z",
            "2024-09-18T10:00:00+08:60",
            "1999-12-31T23:59:59Z",
        ]
    ),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(
        st.sampled_from(["history", "web_search", "x", "", "p" * 65]),
        st.sampled_from([0, 1, 2.0, True, -1, 10**6 + 1, 10**9 + 1]),
        max_size=3,
    ),
)
FIELDS = st.sampled_from([*BASE, "type", "channel", "plugins", "input_breakdown", "extra"])


def schema_accepts(body: Any) -> bool:
    try:
        _validator("usage")(body)
        return True
    except fastjsonschema.JsonSchemaValueException:
        return False


def native(raw: bytes, key: str = "") -> Usage | None:
    return records._native_usage(raw, raw.decode("utf-8", errors="replace"), key)


def generic(raw: bytes, key: str = "") -> Any:
    """The record as the generic validator path builds it."""
    original = records._native_usage
    records._native_usage = lambda raw, text, key: None
    try:
        return parse_record(raw, key)
    finally:
        records._native_usage = original


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(FIELDS, ODD_VALUES, max_size=4), st.lists(FIELDS, max_size=2))
def test_never_accepts_what_the_schema_refuses(changes: dict[str, Any], dropped: list[str]) -> None:
    body = {**BASE, **changes}
    for name in dropped:
        body.pop(name, None)
    raw = orjson.dumps(body)
    usage = native(raw)
    if usage is not None:
        assert schema_accepts(body), body
        assert usage == generic(raw), body


def test_hostile_corpus_native_and_generic_paths_agree() -> None:
    taken = 0
    for raw in hostile_corpus(3000, seed=11):
        usage = native(raw) if len(raw) <= records.MAX_RECORD_BYTES else None
        if usage is not None:
            taken += 1
            assert schema_accepts(orjson.loads(raw)), raw
            assert usage == generic(raw), raw
        assert parse_record(raw) == generic(raw), raw
    assert taken > 500  # the corpus holds plenty of valid usage records


def test_generated_usage_takes_the_native_path_and_builds_the_same_record() -> None:
    lines = [line.encode() for line in generate(3000, seed=3)]
    usages = [raw for raw in lines if isinstance(generic(raw), Usage)]
    assert len(usages) > 2000
    assert all(native(raw) is not None for raw in usages)
    assert [parse_record(raw) for raw in lines] == [generic(raw) for raw in lines]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"type": "usage"},
        {"channel": "console"},
        {"channel": "api"},
        {"plugins": {}},
        {"plugins": {"web_search": 0}},
        {"plugins": {"web_search": 2, "image": 0, "角色": 1}},
        {"input_breakdown": {}},
        {"input_breakdown": {"web_search": 3, "history": 1}},
        {"event_id": '引号"反斜杠\\制表\t换行\n\u2028\U0001f600\x00\x7f'},
        {"model": "x" * 128},
        {"timestamp": "2024-09-18T02:00:00Z"},
        {"timestamp": "2024-09-18t02:00:00.500z"},
        {"timestamp": "2024-09-18T10:00:00.5+08:00"},
        {"timestamp": "2024-09-18T10:00:00.000+08:00"},
        {"timestamp": "2024-09-17T21:30:00.000001-04:30"},
    ],
)
def test_digest_is_the_canonical_digest_of_the_normal_payload(change: dict[str, Any]) -> None:
    """Digests are stored (seen_records) and compared with later deliveries of the same event:
    the native path must give the digest of the same normal form as before, byte for byte:
    type and channel written out, plugins used zero times left out, keys sorted, and the instant
    in its one spelling (+08:00, fraction of 0, 3 or 6 digits: how most producers write, and the
    digest such a record had before spellings were normalised)."""
    body = {**BASE, **change}
    usage = native(orjson.dumps(body))
    assert usage is not None
    normal = dict(
        body,
        type="usage",
        channel=body.get("channel", "api"),
        plugins={k: v for k, v in body.get("plugins", {}).items() if v},
        timestamp=format_ts(usage.ts_us).replace("000+", "+"),
    )
    assert usage.digest == canonical_digest(normal)
    assert usage.plugins == tuple(sorted(normal["plugins"].items()))
    assert usage.channel == normal["channel"]


def test_digest_of_a_fixed_record_never_changes() -> None:
    """The digest of one record, pinned: a change of the normal form or of the hash would make
    every redelivery after an upgrade a conflicting duplicate."""
    usage = native(orjson.dumps({**BASE, "plugins": {"web_search": 1, "image": 0}}))  # the digest the code before the native decoder gave
    assert usage is not None and usage.digest == "7e6b297e7ba2324e9967ed33863dc941"


@pytest.mark.parametrize(
    "change",
    [
        {"input_tokens": 2.0},
        {"plugins": {"web_search": 1.0}},
        {"input_breakdown": {"history": 3.0}},
    ],
)
def test_whole_floats_are_valid_by_the_generic_path(change: dict[str, Any]) -> None:
    raw = orjson.dumps({**BASE, **change})
    assert native(raw) is None
    record = parse_record(raw)
    assert isinstance(record, Usage) and not isinstance(record, Invalid)
    as_ints = parse_record(orjson.dumps({**BASE, **{k: _ints(v) for k, v in change.items()}}))
    assert record._replace(raw="") == as_ints._replace(raw="")  # 2.0 and 2 are one payload: same digest


def test_a_key_naming_another_account_is_refused_with_the_reason() -> None:
    raw = orjson.dumps(BASE)
    assert native(raw, "acct-2") is None
    record = parse_record(raw, "acct-2")
    assert isinstance(record, Invalid) and "differs from the message key" in record.detail


def _ints(value: Any) -> Any:
    return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else int(value)


# -- the generator: the rules come from the schema file ------------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads(usage_decoder.SCHEMA_PATH.read_text(encoding="utf-8"))


def test_a_limit_changed_in_the_schema_changes_the_decoder() -> None:
    schema = _schema()
    schema["properties"]["model"]["maxLength"] = 4
    decoder = msgspec.json.Decoder(usage_decoder.struct_type("Narrow", schema))
    with pytest.raises(msgspec.ValidationError, match="model"):
        decoder.decode(orjson.dumps(BASE))
    assert decoder.decode(orjson.dumps({**BASE, "model": "lite"})).model == "lite"


@pytest.mark.parametrize(
    "path, keyword",
    [
        (("properties", "model"), {"format": "uri"}),
        (("properties", "input_tokens"), {"multipleOf": 2}),
        ((), {"minProperties": 1}),
        (("properties", "plugins"), {"patternProperties": {"^x": {"type": "integer"}}}),
    ],
)
def test_a_schema_keyword_it_cannot_check_is_an_error_not_a_skipped_rule(path: tuple[str, ...], keyword: dict[str, Any]) -> None:
    schema = _schema()
    node = schema
    for step in path:
        node = node[step]
    node.update(keyword)
    with pytest.raises(usage_decoder.SchemaNotSupported, match=next(iter(keyword))):
        usage_decoder.struct_type("Broken", schema)


def test_patterns_read_digits_as_ascii_and_dollar_as_the_very_end() -> None:
    for timestamp in ("٢٠٢٤-٠٩-١٨T10:00:00+08:00", "2024-09-18T10:00:00Z\n"):
        assert not _pattern("timestamp").search(timestamp)
        assert native(orjson.dumps({**BASE, "timestamp": timestamp})) is None


# -- the two patterns the native path checks itself ----------------------------------------------


def _pattern(field: str) -> re.Pattern[str]:
    return re.compile(usage_decoder.python_pattern(_schema()["properties"][field]["pattern"]))


TIMESTAMPISH = st.text(alphabet="0123456789-:.+TtZz \\n٢", min_size=18, max_size=36)


@settings(max_examples=5000, deadline=None)
@given(
    st.one_of(
        TIMESTAMPISH,
        st.sampled_from(
            ["2024-09-18T10:00:00Z", "2024-09-18t10:00:00.123456789+08:00", "2024-09-18 10:00:00-03:30", "2024-09-18T10:00:00Z\\n"]
        ),
    )
)
def test_quick_us_accepts_no_timestamp_the_schema_pattern_refuses(text: str) -> None:
    if quick_us(text) != -1:
        assert _pattern("timestamp").search(text), text


@settings(max_examples=2000, deadline=None)
@given(st.text(min_size=1, max_size=4))
def test_the_event_id_check_is_the_schema_pattern(text: str) -> None:
    assert (not text.startswith("#")) == bool(_pattern("event_id").search(text))


def test_the_patterns_left_out_of_the_decoder_are_exactly_those_checked_after() -> None:
    patterned = {name for name, prop in _schema()["properties"].items() if "pattern" in prop}
    assert patterned == usage_decoder.PATTERNS_CHECKED_AFTER  # a new pattern must be added to the checks here
    types = {f.name: f.type for f in msgspec.inspect.type_info(usage_decoder.UsageCall).fields}
    assert all(getattr(types[name], "pattern", None) is None for name in patterned)
    assert types["account_id"].max_length == 128  # the other constraints are still the decoder's


@pytest.mark.parametrize(
    "change",
    [
        {"event_id": "#usage:1"},
        {"event_id": "#"},
        {"timestamp": "2024-09-18T10:00Z"},
        {"timestamp": "2024-09-18T10:00:00"},
        {"timestamp": "2024-09-18T10:00:00+0800"},
        {"timestamp": " 2024-09-18T10:00:00Z"},
        {"timestamp": "2024-09-18T10:00:00.Z"},
    ],
)
def test_what_the_patterns_refuse_is_refused_with_the_reason(change: dict[str, Any]) -> None:
    raw = orjson.dumps({**BASE, **change})
    assert native(raw) is None
    record = parse_record(raw)
    assert isinstance(record, Invalid) and next(iter(change)) in record.detail
