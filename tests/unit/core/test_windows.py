"""Tumbling event-time windows and limit checks."""

from pipeline.core.timestamps import parse_ts
from pipeline.core.windows import MINUTE, SECOND, Limits, violated, window_keys


def test_window_keys_are_second_and_minute_starts():
    ts = parse_ts("2024-06-07T10:15:42.999999+08:00")
    assert window_keys(ts) == (
        (SECOND, parse_ts("2024-06-07T10:15:42+08:00")),
        (MINUTE, parse_ts("2024-06-07T10:15:00+08:00")),
    )


def test_windows_tumble():
    a = window_keys(parse_ts("2024-06-07T10:15:59.999999+08:00"))
    b = window_keys(parse_ts("2024-06-07T10:16:00+08:00"))
    assert a[0] != b[0] and a[1] != b[1]
    c = window_keys(parse_ts("2024-06-07T10:16:00.5+08:00"))
    assert c == b


def test_violated_at_and_over_limit():
    limits = Limits(qps=1, qpm=60, tpm=1000)
    assert violated(limits, 1, 60, 1000) == ()
    assert violated(limits, 2, 1, 1) == ("qps",)
    assert violated(limits, 1, 61, 1) == ("qpm",)
    assert violated(limits, 1, 1, 1001) == ("tpm",)
    assert violated(limits, 2, 61, 1001) == ("qps", "qpm", "tpm")


def test_zero_limits_flag_any_call():
    assert violated(Limits(0, 0, 0), 1, 1, 1) == ("qps", "qpm", "tpm")


def test_limits_updated_keeps_absent_values():
    base = Limits(1, 60, 1000)
    assert base.updated(None, None, 5000) == Limits(1, 60, 5000)
    assert base.updated(5, None, None) == Limits(5, 60, 1000)
    assert base.updated(0, 0, 0) == Limits(0, 0, 0)
    assert base == Limits(1, 60, 1000)  # immutable
