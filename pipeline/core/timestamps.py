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
US_PER_DAY = 24 * US_PER_HOUR  # a UTC day: where RFC 3339 puts a leap second
BILLING_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
BILLING_OFFSET_US = 8 * US_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FORMAT_MIN_US = -62_135_596_800_000_000 + 86_400_000_000  # 0001-01-02T00:00Z: the integer path stays in datetime's years
_FORMAT_MAX_US = 253_402_300_799_999_999 - 86_400_000_000  # 9999-12-30T23:59:59.999999Z
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_HOUR_PREFIXES: dict[int, str] = {}


class TimestampError(ValueError):
    """A timestamp that is not RFC 3339 with an offset."""


def parse_ts(text: str) -> int:
    """RFC 3339 with an offset -> microseconds since the epoch. Naive times are refused. A leap
    second (second 60) is taken where RFC 3339 allows one, the last second of a UTC day however
    the offset spells it, as the last microsecond before midnight UTC (23:59:59.999999Z): it stays
    in its own hour and day. Second 60 anywhere else is refused."""
    normal = text.strip()
    if len(normal) > 10 and normal[10] in "t ":
        normal = normal[:10] + "T" + normal[11:]
    if normal.endswith("z"):
        normal = normal[:-1] + "Z"
    if len(normal) >= 19 and normal[16] == ":" and normal[17:19] == "60":
        return _leap_second(text, normal[:17] + "59" + normal[19:])
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


def _leap_second(text: str, at_59: str) -> int:
    """parse_ts of a second-60 timestamp, given the same text with second 59."""
    try:
        start_of_59 = parse_ts(at_59)
    except TimestampError as exc:
        raise TimestampError(str(exc).replace(repr(at_59), repr(text))) from None
    start_of_59 -= start_of_59 % US_PER_SECOND
    end = start_of_59 + US_PER_SECOND
    if end % US_PER_DAY:
        raise TimestampError(
            f"timestamp {text!r} has second 60 outside the last minute of a UTC day (RFC 3339 allows a leap second only at 23:59:60Z)"
        )
    return end - 1


def quick_us(text: str) -> int:
    """parse_ts for the shape producers send (`2024-06-06T20:00:44.240+08:00`: ASCII digits, T,
    t or space, up to 9 fraction digits, Z, z or an offset), in integer arithmetic; -1 for
    anything else, where parse_ts decides. Where it answers it gives parse_ts's answer (tests).
    Its reason to exist: datetime.fromisoformat with a tzinfo was a tenth of a worker's time."""
    size = len(text)
    if not 20 <= size <= 35 or text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":" or text[16] != ":":
        return -1
    year, month, day = _digits(text, 0, 4), _digits(text, 5, 2), _digits(text, 8, 2)
    hour, minute, second = _digits(text, 11, 2), _digits(text, 14, 2), _digits(text, 17, 2)
    if (
        year < 1
        or not 1 <= month <= 12
        or not 1 <= day <= _month_days(year, month)
        or not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 60)
    ):
        return -1
    end, micros = 19, 0
    if text[19] == ".":
        end = 20
        while end < size and "0" <= text[end] <= "9":
            end += 1
        if not 21 <= end <= 29:
            return -1
        kept = min(end, 26)  # parse_ts keeps microseconds and drops the rest
        micros = _digits(text, 20, kept - 20) * 10 ** (26 - kept)
    offset = _offset_seconds(text, end)
    if offset == -1:
        return -1
    seconds = _civil_days(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset
    if second == 60:  # a leap second: only at the end of a UTC day, as its last microsecond (parse_ts)
        return seconds * US_PER_SECOND - 1 if seconds % 86_400 == 0 else -1
    return seconds * US_PER_SECOND + micros


def _digits(text: str, start: int, count: int) -> int:
    """The ASCII decimal number text[start:start + count], or -1."""
    value = 0
    for i in range(start, start + count):
        digit = ord(text[i]) - 48
        if not 0 <= digit <= 9:
            return -1
        value = value * 10 + digit
    return value


def _offset_seconds(text: str, start: int) -> int:
    """Seconds east of UTC of a `Z`, `z` or `+hh:mm` ending exactly the text; -1 otherwise (also
    for -1 s, which no hh:mm offset is)."""
    rest = len(text) - start
    if rest == 1 and text[start] in "Zz":
        return 0
    if rest != 6 or text[start] not in "+-" or text[start + 3] != ":":
        return -1
    hours, minutes = _digits(text, start + 1, 2), _digits(text, start + 4, 2)
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        return -1
    seconds = hours * 3600 + minutes * 60
    return seconds if text[start] == "+" else -seconds


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _civil_days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    if month <= 2:
        year -= 1
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    return era * 146_097 + year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year - 719_468


def to_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def from_us(us: int) -> datetime:
    """Microseconds -> aware datetime in the billing time zone."""
    return (_EPOCH + timedelta(microseconds=us)).astimezone(BILLING_TZ)


def format_ts(us: int) -> str:
    """Billing-zone RFC 3339, seconds precision when whole (what bills show): what
    from_us(us).isoformat() gives, from a cached prefix per hour (every published violation
    carries two instants, and datetime took a tenth of the worker's time publishing them)."""
    if not _FORMAT_MIN_US <= us <= _FORMAT_MAX_US:
        return _format_by_datetime(us)  # years 1 and 9999 and beyond: datetime's answer, or its error
    hours, rest = divmod(us + BILLING_OFFSET_US, US_PER_HOUR)
    prefix = _HOUR_PREFIXES.get(hours)
    if prefix is None:
        prefix = _hour_prefix(hours)
    seconds, micros = divmod(rest, US_PER_SECOND)
    clock = prefix + _TWO_DIGITS[seconds // 60] + ":" + _TWO_DIGITS[seconds % 60]
    if micros:
        return clock + "." + str(micros + US_PER_SECOND)[1:] + "+08:00"
    return clock + "+08:00"


def canonical_ts(text: str, us: int) -> str:
    """The one spelling of an instant that a record's digest is taken of, so that two records
    spelling the same instant differently (`Z` or `+08:00`, `.5` or `.500`, `t` or `T`) are one
    payload: billing-zone RFC 3339 (`T`, `+08:00`) with no fraction, or 3 or 6 digits, the fewest
    that hold the microseconds. `text` is a timestamp parse_ts read as `us` (the schema's shape).
    That is how most producers already write (`2024-06-06T20:00:44.240+08:00`), so such a text is
    returned as it is, unformatted, and such records keep the digest they had before."""
    size = len(text)
    if (
        text.endswith("+08:00")
        and text[10] == "T"
        and text[17] != "6"
        and (size == 25 or (size == 29 and text[20:23] != "000") or (size == 32 and text[23:26] != "000"))
    ):
        return text
    spelled = format_ts(us)  # seconds, or six fraction digits
    return spelled[:23] + spelled[26:] if len(spelled) == 32 and spelled[23:26] == "000" else spelled


def _hour_prefix(hours: int) -> str:
    """`YYYY-MM-DDTHH:` of an hour count from the epoch in billing time; remembered."""
    if len(_HOUR_PREFIXES) >= 100_000:
        _HOUR_PREFIXES.clear()
    year, month, day = _civil_from_days(hours // 24)
    prefix = f"{year:04d}-{month:02d}-{day:02d}T{hours % 24:02d}:"
    _HOUR_PREFIXES[hours] = prefix
    return prefix


def _format_by_datetime(us: int) -> str:
    moment = from_us(us)
    spec = "seconds" if moment.microsecond == 0 else "microseconds"
    return moment.isoformat(timespec=spec)


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count from 1970-01-01 (H. Hinnant's civil_from_days)."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def hour_start(us: int) -> int:
    """Start of the billing hour holding `us` (UTC+8 hours coincide with UTC hours)."""
    return us - us % US_PER_HOUR


def day_start_of(day: date) -> int:
    """00:00 Asia/Shanghai of a calendar day, in microseconds: when a dated price starts."""
    return to_us(datetime(day.year, day.month, day.day, tzinfo=BILLING_TZ))
