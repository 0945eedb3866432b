"""Faults and bad input: the hostile corpus (tests/hostile.py) through parse_record + fold.apply.

Nothing may raise; every record ends as exactly one of billed / applied / duplicate / rejected; a
rejection has a reason of BILLING_RULES §10 and a detail; a schema failure is `invalid_schema`;
money is a non-negative Decimal fixed at 6 places and no float reaches an output.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

TESTS = Path(__file__).resolve().parents[2]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from helpers import CATALOG, touched  # noqa: E402
from hostile import MUST_BE_INVALID, MUST_PARSE, hostile_corpus  # noqa: E402

from pipeline.core.facts import APPLIED, BILLED, DUPLICATE, REASONS, REJECTED, Outcome  # noqa: E402
from pipeline.core.fold import apply  # noqa: E402
from pipeline.core.records import AccountRecord, Invalid, Usage, parse_record  # noqa: E402
from pipeline.core.state import AccountState  # noqa: E402

N = 10_000
KEY_ACCOUNT = "acct-from-key"
STATUSES = {BILLED, APPLIED, DUPLICATE, REJECTED}


def message_key(i: int, raw: bytes) -> str:
    """The Kafka key a producer would have used: mostly the record's own account, sometimes none,
    sometimes a different account (that record must then be `invalid_schema`)."""
    if i % 13 == 0:
        return KEY_ACCOUNT
    if i % 3 == 0:
        return ""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    account = body.get("account_id") if isinstance(body, dict) else None
    return account if isinstance(account, str) else ""


def floats_in(value: Any, path: str = "") -> list[str]:
    """Paths of every float inside dataclasses, containers and scalars."""
    if isinstance(value, float):
        return [path or "<value>"]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [p for f in dataclasses.fields(value) for p in floats_in(getattr(value, f.name), f"{path}.{f.name}")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in floats_in(k, f"{path}[key]") + floats_in(v, f"{path}[{k!r:.40}]")]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [p for i, v in enumerate(value) for p in floats_in(v, f"{path}[{i}]")]
    return []


def assert_money(amount: Any, what: str) -> None:
    assert type(amount) is Decimal, (what, amount)
    assert amount.is_finite(), (what, amount)
    assert amount.as_tuple().exponent == -6, (what, amount)
    assert amount >= 0, (what, amount)


@dataclasses.dataclass
class Run:
    corpus: list[bytes]
    indices: list[int]  # corpus index of each of records / outcomes
    records: list[Any]
    outcomes: list[Outcome]
    touched: list[tuple[list, list]]  # the lines and windows each record changed
    states: dict[str, AccountState]
    errors: list[tuple[int, str]]


@pytest.fixture(scope="module")
def run() -> Run:
    corpus = hostile_corpus(N, seed=7)
    states: dict[str, AccountState] = {}
    indices, records, outcomes, changed, errors = [], [], [], [], []
    for i, raw in enumerate(corpus):
        try:
            record = parse_record(raw, message_key(i, raw))
            state = states.get(record.account_id)
            if state is None:
                state = states[record.account_id] = AccountState(record.account_id)
            outcome = apply(state, record, CATALOG)
        except Exception as exc:  # noqa: BLE001 - the point is that there are none
            errors.append((i, f"{type(exc).__name__}: {str(exc)[:200]}"))
            continue
        indices.append(i)
        records.append(record)
        outcomes.append(outcome)
        changed.append(touched(state))
    return Run(corpus, indices, records, outcomes, changed, states, errors)


def test_corpus_is_deterministic_and_big_enough():
    corpus = hostile_corpus(N, seed=7)
    assert len(corpus) == N
    assert all(type(raw) is bytes for raw in corpus)
    assert corpus == hostile_corpus(N, seed=7)
    assert corpus != hostile_corpus(N, seed=8)
    assert len(hostile_corpus(500, seed=3)) == 500


def test_no_exceptions(run):
    assert run.errors == []
    assert len(run.outcomes) == N


def test_every_record_ends_in_exactly_one_status(run):
    for record, outcome, changed in zip(run.records, run.outcomes, run.touched):
        assert outcome.status in STATUSES
        assert (outcome.status == REJECTED) == (outcome.rejection is not None)
        assert (outcome.status == BILLED) == (outcome.priced is not None)
        if isinstance(record, Invalid):
            assert outcome.status == REJECTED
        elif isinstance(record, AccountRecord):
            assert outcome.status in (APPLIED, DUPLICATE, REJECTED)
        else:
            assert isinstance(record, Usage)
            assert outcome.status in (BILLED, DUPLICATE, REJECTED)
        if outcome.status in (DUPLICATE, REJECTED):
            assert changed == ([], []) and outcome.violations == ()


def test_the_corpus_reaches_every_outcome(run):
    statuses = Counter(o.status for o in run.outcomes)
    assert statuses[BILLED] >= 500, statuses
    assert statuses[APPLIED] >= 20 and statuses[DUPLICATE] >= 20, statuses
    assert statuses[REJECTED] >= N // 2, statuses
    reasons = Counter(o.rejection.reason for o in run.outcomes if o.rejection)
    for reason in REASONS:
        assert reasons[reason] > 0, (reason, reasons)
    kinds = Counter(type(r).__name__ for r in run.records)
    assert kinds["Invalid"] >= N // 3 and kinds["Usage"] >= N // 5 and kinds["AccountRecord"] >= 50, kinds


def test_rejections_have_a_known_reason_and_a_detail(run):
    for record, outcome in zip(run.records, run.outcomes):
        rejection = outcome.rejection
        if rejection is None:
            continue
        assert rejection.reason in REASONS
        assert isinstance(rejection.detail, str) and rejection.detail.strip()
        assert rejection.record_id
        assert rejection.account_id == record.account_id
        if isinstance(record, Invalid):
            assert rejection.reason in ("invalid_schema", "unauthorized"), rejection
            assert rejection.record_id.startswith("raw:")
        else:
            assert rejection.reason != "invalid_schema", rejection
            if rejection.reason == "api_key_limit":
                assert record.kind == "api_key.created"


def test_the_message_key_is_enforced(run):
    for i, record in zip(run.indices, run.records):
        if i % 13 == 0 and not isinstance(record, Invalid):
            assert record.account_id == KEY_ACCOUNT


def test_money_is_decimal_at_six_places_and_never_negative(run):
    billed = 0
    for outcome in run.outcomes:
        if outcome.priced is not None:
            billed += 1
            assert_money(outcome.priced.token_amount, "token_amount")
            assert_money(outcome.priced.plugin_amount, "plugin_amount")
            p = outcome.priced
            assert p.free_tokens + p.billed_input_tokens + p.billed_output_tokens <= p.input_tokens + p.output_tokens
            assert min(p.free_tokens, p.billed_input_tokens, p.billed_output_tokens, p.input_tokens, p.output_tokens) >= 0
    assert billed
    for state in run.states.values():
        for key, line in state.lines.items():
            assert_money(line.amount, f"line {key}")
            assert min(line.requests, line.input_tokens, line.output_tokens, line.free_tokens, line.quantity) >= 0
            assert line.billed_input_tokens <= line.input_tokens and line.billed_output_tokens <= line.output_tokens
        assert sum(line.free_tokens for line in state.lines.values()) == state.free_used <= CATALOG.free_quota_tokens


def test_lines_add_up_to_the_priced_calls(run):
    priced: dict[str, Decimal] = {}
    for outcome in run.outcomes:
        if outcome.priced is not None:
            p = outcome.priced
            priced[p.account_id] = priced.get(p.account_id, Decimal(0)) + p.token_amount + p.plugin_amount
    for account, state in run.states.items():
        assert sum((line.amount for line in state.lines.values()), Decimal(0)) == priced.get(account, Decimal(0)), account


def test_no_float_in_any_output_or_state(run):
    for i, outcome in enumerate(run.outcomes):
        assert floats_in(outcome) == [], i
    for account, state in run.states.items():
        assert floats_in(state) == [], account
        assert floats_in(orjson.loads(state.to_json())) == [], account


def test_state_round_trips_after_the_hostile_run(run):
    assert len(run.states) > 10
    for account, state in run.states.items():
        data = state.to_json()
        back = AccountState.from_json(data)
        assert back == dataclasses.replace(state, seen={}, lines={}, line_hours=(), windows={}), account
        assert back.to_json() == data
        assert AccountState.from_json(data.decode("utf-8")) == back


def test_parsing_is_deterministic(run):
    for i, record in list(zip(run.indices, run.records))[::7]:
        raw = run.corpus[i]
        assert parse_record(raw, message_key(i, raw)) == record


@pytest.mark.parametrize("raw", [raw for _, raw in MUST_BE_INVALID], ids=[name for name, _ in MUST_BE_INVALID])
def test_named_hostile_record_is_invalid_schema(raw):
    record = parse_record(raw, "")
    assert isinstance(record, Invalid), record
    assert record.detail
    outcome = apply(AccountState(record.account_id), record, CATALOG)
    expected = (
        "unauthorized" if b'"type":"clock.tick"' in raw or b'"rebill.lines"' in raw or b'"billing.barrier"' in raw else "invalid_schema"
    )
    assert outcome.status == REJECTED and outcome.rejection.reason == expected
    assert not outcome.claimed


@pytest.mark.parametrize("raw", [raw for _, raw in MUST_PARSE], ids=[name for name, _ in MUST_PARSE])
def test_named_odd_but_wellformed_record_parses(raw):
    record = parse_record(raw, "")
    assert isinstance(record, (Usage, AccountRecord)), getattr(record, "detail", record)
    outcome = apply(AccountState(record.account_id), record, CATALOG)
    assert outcome.status in STATUSES
    assert floats_in(outcome) == []


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
@pytest.mark.parametrize("value", [b"true", b"false"])
def test_a_json_boolean_is_not_a_token_count(field, value):
    """fastjsonschema's "integer" check excludes bool (isinstance(True, int) is True in Python)."""
    body = orjson.loads(MUST_PARSE[0][1])
    body[field] = 424242
    raw = orjson.dumps(body).replace(b"424242", value)
    record = parse_record(raw)
    assert isinstance(record, Invalid)
    assert "integer" in record.detail


def test_deep_nesting_just_under_the_json_depth_limit_is_invalid_not_a_crash():
    """orjson refuses depth > 1024; a depth a little under that parses, and must not crash while
    being described (repr of such a value overflows Python's recursion limit)."""
    for depth in (990, 1000, 1023):
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
            for field in ("type", "account_id", "event_id", "model", "input_tokens"):
                body = b'{"account_id":"a","timestamp":"2024-09-18T10:00:00+08:00","%s":%s}' % (field.encode(), inner.encode())
                record = parse_record(body)
                assert isinstance(record, Invalid), (depth, field)
                assert len(record.detail) < 1000


def test_offset_minutes_over_59_are_not_rfc_3339():
    good = parse_record(MUST_PARSE[0][1].replace(b"+08:00", b"+08:59"))
    assert isinstance(good, Usage)
    for offset in (b"+08:60", b"+00:99", b"-05:75"):
        record = parse_record(MUST_PARSE[0][1].replace(b"+08:00", offset))
        assert isinstance(record, Invalid), offset


def test_non_ascii_digits_do_not_match_schema_patterns():
    """JSON Schema patterns are ECMA-262: \\d is [0-9], not any script's digit."""
    for amount in ("١٠٠", "１００", "100\u0660"):
        raw = orjson.dumps({"type": "credit.recharge", "account_id": "a", "timestamp": "2024-09-18T10:00:00+08:00", "amount": amount})
        assert isinstance(parse_record(raw), Invalid), amount
    raw = orjson.dumps({"type": "credit.recharge", "account_id": "a", "timestamp": "2024-09-18T10:00:00+08:00", "amount": "100.5"})
    assert isinstance(parse_record(raw), AccountRecord)


_REBILL_LINE = {
    "hour": "2024-09-18T10:00:00+08:00",
    "api_key_id": "k",
    "item": "xingchen-lite",
    "requests": 1,
    "input_tokens": 1,
    "output_tokens": 1,
    "free_tokens": 0,
    "billed_input_tokens": 1,
    "billed_output_tokens": 1,
    "quantity": 0,
    "amount": "1",
}
_REBILL_HOSTILE = {
    "hour-not-a-timestamp": b'"hour":"garbage"',
    "hour-offset-minute-60": b'"hour":"2024-09-18T10:00:00+08:60"',
    "hour-before-2000": b'"hour":"1969-01-01T00:00:00Z"',
    "count-1e308": b'"requests":1e308',
    "count-10**30": b'"input_tokens":1' + b"0" * 30,
}


@pytest.mark.parametrize("case", sorted(_REBILL_HOSTILE))
def test_hostile_rebill_lines_are_invalid_schema(case):
    line = orjson.dumps(_REBILL_LINE)
    field = _REBILL_HOSTILE[case].split(b":", 1)[0]
    start = line.index(field + b":")
    end = line.index(b",", start)
    line = line[:start] + _REBILL_HOSTILE[case] + line[end:]
    raw = b'{"type":"rebill.lines","account_id":"a","timestamp":"2024-09-18T10:00:00+08:00","run_id":"r","lines":[' + line + b"]}"
    record = parse_record(raw)
    outcome = apply(AccountState("a"), record, CATALOG)  # must not raise
    assert isinstance(record, Invalid) and outcome.rejection.reason == "invalid_schema"
