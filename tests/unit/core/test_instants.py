"""One instant, however it is spelled: RFC 3339 leap seconds, and redeliveries that spell the same
instant another way (`Z` for `+00:00`, another offset, another fraction length) being one payload."""

from __future__ import annotations

import json

import orjson
import pytest
from helpers import CATALOG, recharge, voucher
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.fold import DUPLICATE, apply
from pipeline.core.records import AccountRecord, Invalid, Usage, parse_record
from pipeline.core.state import AccountState
from pipeline.core.timestamps import US_PER_DAY, US_PER_HOUR, TimestampError, canonical_ts, format_ts, hour_start, parse_ts, quick_us
from pipeline.core.usage_decoder import decode

END_OF_2016 = 1_483_228_800_000_000  # 2017-01-01T00:00:00Z


# -- leap seconds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2016-12-31T23:59:60Z",
        "2016-12-31t23:59:60z",
        "2016-12-31 23:59:60+00:00",
        "2016-12-31T23:59:60-00:00",
        "2017-01-01T07:59:60+08:00",
        "2016-12-31T18:29:60-05:30",
        "2016-12-31T23:59:60.5Z",
        "2016-12-31T23:59:60.999999999Z",
    ],
)
def test_a_leap_second_is_the_last_microsecond_of_its_utc_day(text: str) -> None:
    assert parse_ts(text) == END_OF_2016 - 1
    assert quick_us(text) in (END_OF_2016 - 1, -1)  # where it answers, it gives parse_ts's answer


def test_a_leap_second_stays_in_its_own_hour_and_day() -> None:
    leap = parse_ts("2016-12-31T23:59:60Z")
    assert hour_start(leap) == parse_ts("2016-12-31T23:00:00Z")
    assert (leap + 8 * US_PER_HOUR) // US_PER_DAY == (parse_ts("2016-12-31T23:59:59Z") + 8 * US_PER_HOUR) // US_PER_DAY
    assert format_ts(leap) == "2017-01-01T07:59:59.999999+08:00"


def test_the_shapes_producers_send_take_the_quick_path_for_a_leap_second() -> None:
    assert quick_us("2016-12-31T23:59:60Z") == quick_us("2017-01-01T07:59:60.123+08:00") == END_OF_2016 - 1


@pytest.mark.parametrize(
    "text",
    [
        "2024-09-18T23:59:60+08:00",  # 15:59:60Z: RFC 3339 allows second 60 only at the end of a UTC day
        "2016-12-31T23:58:60Z",
        "2016-12-31T22:59:60Z",
        "2016-12-31T23:59:60-01:00",
        "2016-12-31T23:59:61Z",
        "2016-12-31T23:59:60",
        "2017-01-01T00:00:60Z",
    ],
)
def test_second_60_anywhere_else_is_refused(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_ts(text)
    assert quick_us(text) == -1


def test_a_refused_leap_second_names_the_text_as_given() -> None:
    with pytest.raises(TimestampError, match="2024-09-18T23:59:60\\+08:00.*second 60"):
        parse_ts("2024-09-18T23:59:60+08:00")
    with pytest.raises(TimestampError, match="'2016-12-31T23:59:60'"):
        parse_ts("2016-12-31T23:59:60")


def test_a_usage_record_at_a_leap_second_is_billed_in_its_hour() -> None:
    body = {
        "account_id": "a",
        "timestamp": "2016-12-31T23:59:60Z",
        "event_id": "leap",
        "api_key_id": "k",
        "model": "xingchen-lite",
        "input_tokens": 1,
        "output_tokens": 1,
    }
    record = parse_record(orjson.dumps(body))
    assert isinstance(record, Usage) and record.ts_us == END_OF_2016 - 1
    # the last second the bill tables hold can be a leap second too; 15:59:60Z is none
    late = parse_record(orjson.dumps({**body, "timestamp": "2099-12-31T23:59:60Z"}))
    assert isinstance(late, Usage)
    assert isinstance(parse_record(orjson.dumps({**body, "timestamp": "2024-09-18T23:59:60+08:00"})), Invalid)


# -- one instant, one payload ------------------------------------------------------------------------

CALL = {
    "account_id": "acct-1",
    "timestamp": "2024-06-06T20:00:44.240+08:00",
    "event_id": "ev-1",
    "api_key_id": "k-1",
    "model": "xingchen-plus",
    "input_tokens": 10,
    "output_tokens": 5,
}
SAME_INSTANT = [
    "2024-06-06T20:00:44.240+08:00",
    "2024-06-06T12:00:44.240Z",
    "2024-06-06T12:00:44.24z",
    "2024-06-06t12:00:44.240000+00:00",
    "2024-06-06 12:00:44.240000000-00:00",
    "2024-06-06T07:00:44.24-05:00",
    "2024-06-06T20:00:44.2400+08:00",
]


@pytest.mark.parametrize("spelling", SAME_INSTANT)
def test_a_usage_redelivery_spelling_the_instant_otherwise_is_a_duplicate_not_a_conflict(spelling: str) -> None:
    first = parse_record(orjson.dumps(CALL))
    again = parse_record(orjson.dumps({**CALL, "timestamp": spelling}))
    assert isinstance(first, Usage) and isinstance(again, Usage)
    assert again.digest == first.digest
    assert_second_is_a_duplicate(first, again)


def assert_second_is_a_duplicate(first: Usage | AccountRecord, again: Usage | AccountRecord) -> None:
    state = AccountState(first.account_id)
    apply(state, first, CATALOG)
    assert apply(state, again, CATALOG).status == DUPLICATE


def test_another_instant_is_another_payload() -> None:
    first = parse_record(orjson.dumps(CALL))
    for other in ("2024-06-06T20:00:44.241+08:00", "2024-06-06T12:00:44.240001Z", "2024-06-06T20:00:44.240+07:00"):
        assert parse_record(orjson.dumps({**CALL, "timestamp": other})).digest != first.digest, other


@pytest.mark.parametrize(
    "field, first, again",
    [
        ("timestamp", "2024-06-07T10:00:00+08:00", "2024-06-07T02:00:00Z"),
        ("timestamp", "2024-06-07T10:00:00.5+08:00", "2024-06-07T02:00:00.500+00:00"),
        ("expires_at", "2024-07-07T00:00:00+08:00", "2024-07-06T16:00:00Z"),
        ("expires_at", "2024-07-07T00:00:00.000+08:00", "2024-07-06t16:00:00.000000z"),
    ],
)
def test_an_account_record_spelling_the_instant_otherwise_is_the_same_record(field: str, first: str, again: str) -> None:
    """An account record's identity is its payload's digest: a respelled redelivery of a recharge
    or a voucher must be a duplicate, never credited a second time."""
    bodies = [voucher("v-1", "10.00", expires_at="2024-07-07T00:00:00+08:00") for _ in range(2)]
    bodies[0][field], bodies[1][field] = first, again
    one, two = (parse_record(json.dumps(b).encode()) for b in bodies)
    assert isinstance(one, AccountRecord) and isinstance(two, AccountRecord)
    assert one.identity == two.identity
    assert_second_is_a_duplicate(one, two)


def test_a_respelled_recharge_is_credited_once() -> None:
    state = AccountState("acct-1")
    for ts in ("2024-06-07T10:00:00+08:00", "2024-06-07T02:00:00Z", "2024-06-07T02:00:00.000+00:00"):
        apply(state, parse_record(json.dumps(recharge("50.00", ts=ts)).encode()), CATALOG)
    assert state.cash_balance == 50


def test_the_usual_spelling_keeps_the_digest_it_had() -> None:
    """Digests are stored (seen_records): a record spelled as most producers spell it (+08:00,
    `T`, none or 3 or 6 fraction digits) keeps the digest it had before spellings were
    normalised, so its redelivery after the upgrade is still a duplicate (pinned, taken from the
    code before the change)."""
    usage = parse_record(
        orjson.dumps(
            {
                **CALL,
                "timestamp": "2024-09-18T10:00:00+08:00",
                "event_id": "ev-1",
                "account_id": "acct-1",
                "api_key_id": "k-1",
                "plugins": {"web_search": 1, "image": 0},
            }
        )
    )
    assert isinstance(usage, Usage) and usage.digest == "7e6b297e7ba2324e9967ed33863dc941"
    for usual in ("2024-06-06T20:00:44+08:00", "2024-06-06T20:00:44.240+08:00", "2024-06-06T20:00:44.240001+08:00"):
        assert canonical_ts(usual, parse_ts(usual)) is usual  # taken as it is, not formatted again


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(parse_ts("2000-01-01T00:00:00Z"), parse_ts("2099-12-31T23:59:59.999999Z")),
    st.sampled_from([0, 1, 1000, 123_000, 123_456, 999_999, 500_000]),
    st.sampled_from(["Z", "z", "+08:00", "-05:30", "+00:00", "+14:00"]),
    st.sampled_from("Tt "),
    st.sampled_from(["", "000", "000000"]),
)
def test_every_spelling_of_an_instant_has_one_canonical_form(seconds_us: int, micros: int, zone: str, sep: str, pad: str) -> None:
    from datetime import datetime, timedelta, timezone

    instant = seconds_us - seconds_us % 1_000_000 + micros
    offset = timezone.utc if zone in "Zz" else timezone(timedelta(hours=int(zone[:3]), minutes=int(zone[0] + zone[4:])))
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=instant)
    local = moment.astimezone(offset)
    fraction = f".{local.microsecond:06d}".rstrip("0") if local.microsecond else ""
    text = (
        local.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
        + (fraction + pad if fraction else "")
        + (zone if zone in "Zz" else local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:])
    )
    assert parse_ts(text) == instant, text
    canonical = canonical_ts(text, instant)
    assert canonical == canonical_ts(format_ts(instant), instant)
    assert parse_ts(canonical) == instant
    assert canonical.endswith("+08:00") and len(canonical) in (25, 29, 32)
    assert decode(orjson.dumps({**CALL, "timestamp": text})) is not None or len(text) > 35
