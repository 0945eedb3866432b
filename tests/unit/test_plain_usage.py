"""The hand-written usage check (`plain_usage`) is a shortcut around the generic JSON Schema
validator: it may send a valid record the slow way, but it must never let through a record the
schema refuses, and the record it builds must be the one the slow way builds."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.records as records
from pipeline.records import Invalid, Usage, _validator, parse_record, plain_usage
from pipeline.workload import generate
from tests.hostile import hostile_corpus

import fastjsonschema

BASE: dict[str, Any] = {
    "account_id": "acct-1", "timestamp": "2024-09-18T10:00:00+08:00", "event_id": "ev-1", "api_key_id": "k-1",
    "model": "xingchen-plus", "input_tokens": 10, "output_tokens": 5,
}
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([10**9, 10**9 + 1, 10**6, 10**6 + 1, 2.0, 2.5, -0.0]),
    st.text(max_size=3), st.sampled_from(["", "#x", "a" * 128, "a" * 129, "p" * 64, "p" * 65, "usage", "api", "console",
                                          "2024-09-18T10:00:00Z\n", "2024-09-18 10:00:00z", "２０２４-09-18T10:00:00Z"]),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(["history", "web_search", "x", ""]),
                                                             st.sampled_from([0, 1, 2.0, True, -1, 10**9 + 1]), max_size=3),
)
FIELDS = st.sampled_from([*BASE, "type", "channel", "plugins", "input_breakdown", "extra"])


def schema_accepts(body: Any) -> bool:
    try:
        _validator("usage")(body)
        return True
    except fastjsonschema.JsonSchemaValueException:
        return False


def slow_parse(raw: bytes) -> Any:
    """The record as the generic validator path builds it."""
    original = records.plain_usage
    records.plain_usage = lambda body: False
    try:
        return parse_record(raw)
    finally:
        records.plain_usage = original


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(FIELDS, ODD_VALUES, max_size=4), st.lists(FIELDS, max_size=2))
def test_never_accepts_what_the_schema_refuses(changes: dict[str, Any], dropped: list[str]) -> None:
    body = {**BASE, **changes}
    for name in dropped:
        body.pop(name, None)
    if plain_usage(body):
        assert schema_accepts(body), body


def test_hostile_corpus_fast_and_slow_paths_agree() -> None:
    taken = 0
    for raw in hostile_corpus(3000, seed=11):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict) and plain_usage(body):
            taken += 1
            assert schema_accepts(body), raw
            assert parse_record(raw) == slow_parse(raw), raw
    assert taken > 500  # the corpus holds plenty of valid usage records


def test_generated_usage_takes_the_fast_path_and_builds_the_same_record() -> None:
    lines = [line.encode() for line in generate(3000, seed=3)]
    usages = [raw for raw in lines if isinstance(slow_parse(raw), Usage)]
    assert len(usages) > 2000
    assert all(plain_usage(orjson.loads(raw)) for raw in usages)
    assert [parse_record(raw) for raw in lines] == [slow_parse(raw) for raw in lines]


@pytest.mark.parametrize("change", [
    {"input_tokens": 2.0}, {"plugins": {"web_search": 1.0}}, {"input_breakdown": {"history": 3.0}},
])
def test_whole_floats_still_valid_by_the_slow_path(change: dict[str, Any]) -> None:
    body = {**BASE, **change}
    assert not plain_usage(body)
    record = parse_record(orjson.dumps(body))
    assert isinstance(record, Usage) and not isinstance(record, Invalid)
    as_ints = parse_record(orjson.dumps({**BASE, **{k: _ints(v) for k, v in change.items()}}))
    assert record._replace(raw="") == as_ints._replace(raw="")  # 2.0 and 2 are one payload: same digest


def _ints(value: Any) -> Any:
    return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else int(value)
