"""How fast this machine runs plain Python right now.

Shared machines change speed from minute to minute (seen here: the same loop took 13 ms and
19 ms a minute apart, and the raw consumer ran at 207,000 and 309,000 records/s in two runs of
the same code). The bench times a fixed loop before its first phase and after its last: compare
two runs' figures only when their machine speeds agree, or compare ratios to (a).
"""

from __future__ import annotations

import timeit


def machine_speed() -> float:
    """Million iterations per second of `sum(range(1_000_000))`, the best of 5 timings."""
    best = min(timeit.repeat("sum(range(1_000_000))", number=5, repeat=5)) / 5
    return 1.0 / best
