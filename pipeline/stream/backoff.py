"""The one retry schedule of the worker's edges: ClickHouse at start, a batch's write, an output's
delivery. Each waits 0.5 s, then twice as long each time, up to 30 s: a short outage is ridden out
in seconds and a long one costs a log line every 30 s, never a busy loop. Money is never skipped,
so there is no last attempt: the caller decides when to stop (a stopping worker, a crash)."""

from __future__ import annotations

from collections.abc import Iterator

FIRST_S = 0.5
MOST_S = 30.0


def delays(first: float = FIRST_S, most: float = MOST_S) -> Iterator[float]:
    """0.5, 1, 2, 4 ... 30, 30, ... seconds: how long to wait before each next attempt."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)
