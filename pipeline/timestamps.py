"""Event time: RFC 3339 strings in, integer microseconds since the epoch (UTC) inside.

Integers keep comparisons and window maths exact and cheap; billing periods are wall-clock
periods in Asia/Shanghai (UTC+8, no daylight saving), so hours line up with UTC hours while
days start at 16:00 UTC.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR
BILLING_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TimestampError(ValueError):
    """A timestamp that is not RFC 3339 with an offset."""


def parse_ts(text: str) -> int:
    """RFC 3339 with an offset -> microseconds since the epoch. Naive times are refused."""
    normal = text.strip()
    if len(normal) > 10 and normal[10] in "t ":
        normal = normal[:10] + "T" + normal[11:]
    if normal.endswith("z"):
        normal = normal[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(normal)
    except ValueError as exc:
        raise TimestampError(f"timestamp {text!r} is not RFC 3339: {exc}") from None
    if moment.tzinfo is None:
        raise TimestampError(f"timestamp {text!r} has no UTC offset")
    if normal[-6:-5] in ("+", "-") and normal[-3:-2] == ":" and not "00" <= normal[-2:] <= "59":
        # fromisoformat takes "+08:60" as +09:00; RFC 3339's offset minute is 00-59
        raise TimestampError(f"timestamp {text!r} has an offset minute over 59")
    return to_us(moment)


def to_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def from_us(us: int) -> datetime:
    """Microseconds -> aware datetime in the billing time zone."""
    return (_EPOCH + timedelta(microseconds=us)).astimezone(BILLING_TZ)


def format_ts(us: int) -> str:
    """Billing-zone RFC 3339, seconds precision when whole (what bills show)."""
    moment = from_us(us)
    spec = "seconds" if moment.microsecond == 0 else "microseconds"
    return moment.isoformat(timespec=spec)


def hour_start(us: int) -> int:
    """Start of the billing hour holding `us` (UTC+8 hours coincide with UTC hours)."""
    return us - us % US_PER_HOUR


def day_start_of(day: date) -> int:
    """00:00 Asia/Shanghai of a calendar day, in microseconds: when a dated price starts."""
    return to_us(datetime(day.year, day.month, day.day, tzinfo=BILLING_TZ))
