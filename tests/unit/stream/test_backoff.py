"""The worker's one retry schedule (pipeline/stream/backoff.py)."""

from __future__ import annotations

from itertools import islice

from pipeline.stream import backoff


def test_the_wait_doubles_from_half_a_second_and_stays_at_thirty_seconds() -> None:
    assert list(islice(backoff.delays(), 9)) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_caller_may_start_lower_and_cap_lower() -> None:
    assert list(islice(backoff.delays(0.1, 0.25), 4)) == [0.1, 0.2, 0.25, 0.25]
