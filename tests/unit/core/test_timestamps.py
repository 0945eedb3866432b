"""Event time: RFC 3339 with an offset, microseconds inside, billing periods in +08:00."""

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.timestamps import (
    US_PER_HOUR,
    TimestampError,
    day_start_of,
    format_ts,
    from_us,
    hour_start,
    parse_ts,
    quick_us,
    to_us,
)

# 2024-06-07T00:00:00+08:00 == 2024-06-06T16:00:00Z
JUNE7_0800 = 1_717_689_600_000_000


def test_parse_utc_and_offset_forms_of_the_same_instant_agree():
    assert parse_ts("2024-06-07T00:00:00+08:00") == JUNE7_0800
    assert parse_ts("2024-06-06T16:00:00Z") == JUNE7_0800
    assert parse_ts("2024-06-06T16:00:00+00:00") == JUNE7_0800
    assert parse_ts("2024-06-06T11:00:00-05:00") == JUNE7_0800
    assert parse_ts("2024-06-06T16:00:00-00:00") == JUNE7_0800


@pytest.mark.parametrize(
    "text",
    ["2024-06-06t16:00:00Z", "2024-06-06 16:00:00Z", "2024-06-06T16:00:00z", "2024-06-06 16:00:00z", " 2024-06-06T16:00:00Z "],
)
def test_parse_accepts_rfc3339_variants(text):
    assert parse_ts(text) == JUNE7_0800


def test_parse_fractional_seconds():
    assert parse_ts("2024-06-06T16:00:00.5Z") == JUNE7_0800 + 500_000
    assert parse_ts("2024-06-06T16:00:00.000001Z") == JUNE7_0800 + 1
    assert parse_ts("2024-06-07T00:00:00.999999+08:00") == JUNE7_0800 + 999_999
    # digits past the microsecond are dropped, never rounded up into the next microsecond
    assert parse_ts("2024-06-06T16:00:00.123456789Z") == JUNE7_0800 + 123_456


@pytest.mark.parametrize(
    "text",
    [
        "2024-06-07T00:00:00",  # naive: no offset
        "2024-06-07",  # a date only
        "2024-13-01T00:00:00Z",  # month 13
        "2024-02-30T00:00:00Z",  # no such day
        "2023-02-29T00:00:00Z",  # not a leap year
        "2024-06-07T24:00:00Z",
        "2024-06-07T10:60:00Z",
        "2024-06-07T10:00:00+24:00",
        "yesterday",
        "",
    ],
)
def test_parse_refuses_non_instants(text):
    with pytest.raises(TimestampError):
        parse_ts(text)


def test_timestamp_error_is_a_value_error():
    assert issubclass(TimestampError, ValueError)


def test_leap_day_is_fine():
    assert parse_ts("2024-02-29T00:00:00+08:00") == to_us(datetime(2024, 2, 28, 16, tzinfo=timezone.utc))


def test_to_us_and_from_us_round_trip_in_billing_zone():
    moment = datetime(2024, 6, 7, 10, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=8)))
    value = to_us(moment)
    back = from_us(value)
    assert back == moment
    assert back.utcoffset() == timedelta(hours=8)
    assert (back.hour, back.minute, back.second, back.microsecond) == (10, 59, 59, 999_999)


def test_to_us_before_epoch():
    assert to_us(datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc)) == -1_000_000


def test_hour_start_is_the_billing_hour():
    h10 = parse_ts("2024-06-07T10:00:00+08:00")
    assert hour_start(parse_ts("2024-06-07T10:00:00+08:00")) == h10
    assert hour_start(parse_ts("2024-06-07T10:59:59.999999+08:00")) == h10
    assert hour_start(parse_ts("2024-06-07T11:00:00+08:00")) == h10 + US_PER_HOUR
    # same instant written in UTC lands in the same billing hour
    assert hour_start(parse_ts("2024-06-07T02:30:00Z")) == h10


def test_day_start_is_midnight_shanghai():
    assert day_start_of(date(2024, 6, 7)) == JUNE7_0800
    assert day_start_of(date(2024, 9, 18)) == parse_ts("2024-09-17T16:00:00Z")
    assert day_start_of(date(2024, 4, 23)) == parse_ts("2024-04-23T00:00:00+08:00")


def test_format_ts_shows_billing_zone():
    assert format_ts(JUNE7_0800) == "2024-06-07T00:00:00+08:00"
    assert format_ts(parse_ts("2024-06-07T02:59:59Z")) == "2024-06-07T10:59:59+08:00"
    assert format_ts(JUNE7_0800 + 1) == "2024-06-07T00:00:00.000001+08:00"
    assert format_ts(JUNE7_0800 + 500_000) == "2024-06-07T00:00:00.500000+08:00"


# -- quick_us: parse_ts's answer in integer arithmetic, or -1 ------------------------------------

TIMESTAMP_PARTS = st.tuples(
    st.integers(0, 2200),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from("Tt -"),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["", ".", ".5", ".123", ".000001", ".999999", ".1234567", ".123456789", ".1234567890"]),
    st.sampled_from(["Z", "z", "+08:00", "-03:30", "+00:00", "-00:00", "+23:59", "+24:00", "+08:60", "+0800", "", "Z ", "UTC"]),
)


@settings(max_examples=3000, deadline=None)
@given(TIMESTAMP_PARTS)
def test_quick_us_gives_parse_ts_answer_or_leaves_it_to_parse_ts(parts):
    year, month, day, sep, hour, minute, second, fraction, offset = parts
    text = f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"
    quick = quick_us(text)
    try:
        expected = parse_ts(text)
    except TimestampError:
        assert quick == -1, text
        return
    assert quick in (expected, -1), text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-06-07T00:00:00+08:00", JUNE7_0800),
        ("2024-06-06t16:00:00z", JUNE7_0800),
        ("2024-06-06 11:00:00-05:00", JUNE7_0800),
        ("2024-06-06T16:00:00.5Z", JUNE7_0800 + 500_000),
        ("2024-06-06T16:00:00.123456789Z", JUNE7_0800 + 123_456),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000),
        ("2000-02-29T00:00:00Z", 951_782_400_000_000),
        ("1970-01-01T00:00:00Z", 0),
        ("2099-12-31T23:59:59.999999Z", 4_102_444_799_999_999),
    ],
)
def test_quick_us_answers_the_shapes_producers_send(text, expected):
    assert quick_us(text) == expected == parse_ts(text)


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-06-06T24:00:00Z",
        "2024-06-06T16:00:60Z",
        "2024-06-06T16:00:00+24:00",
        "2024-06-06T16:00:00+08:60",
        "2024-06-06T16:00:00",
        " 2024-06-06T16:00:00Z",
        "２０２４-06-06T16:00:00Z",
        "2024-06-06T16:00:00.Z",
        "2024-06-06T16:00:00.1234567890Z",
        "2024-06-06T16:00Z",
    ],
)
def test_quick_us_leaves_everything_else_to_parse_ts(text):
    assert quick_us(text) == -1


def _format_by_datetime(us):
    moment = from_us(us)
    return moment.isoformat(timespec="seconds" if moment.microsecond == 0 else "microseconds")


@settings(max_examples=5000, deadline=None)
@given(
    st.one_of(
        st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999 - 8 * 3_600_000_000),  # datetime's range in +08:00
        st.integers(946_684_800_000_000, 4_102_444_800_000_000),
        st.integers(946_684_800, 4_102_444_800).map(lambda s: s * 1_000_000),
    )
)
def test_format_ts_is_what_datetime_writes(us):
    """Bills, statuses and violations on the wire carry format_ts: its integer arithmetic must
    give datetime's text for every instant datetime can hold (whole seconds without a fraction)."""
    assert format_ts(us) == _format_by_datetime(us)


@pytest.mark.parametrize(
    "us",
    [
        0,
        -1,
        1,
        JUNE7_0800,
        JUNE7_0800 - 1,
        951_782_400_000_000,
        4_102_444_799_999_999,
        -62_135_596_800_000_000,
        253_402_300_799_999_999 - 8 * 3_600_000_000,
    ],
)
def test_format_ts_edges(us):
    assert format_ts(us) == _format_by_datetime(us)
    assert parse_ts(format_ts(us)) == us


def test_format_ts_outside_datetime_raises_as_datetime_does():
    with pytest.raises(OverflowError):
        format_ts(253_402_300_800_000_000)
