"""Whole columns turned into what ClickHouse reads from JSON, one compiled loop per column.

sink.encode sends each table as one JSON array per column (JSONCompactColumns). Most columns go
as they are; these few need a conversion. Done a value at a time from the sink's interpreted
code, they took about 2 us a record, a tenth of the worker's thread; here a column is one loop.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Sequence

from pipeline.core.timestamps import US_PER_SECOND


def seconds_from_micros(values: Sequence[int | None]) -> list[float]:
    """DateTime64 values in JSON, where a number is read as seconds. Exact: event times are
    validated to 2000-2100 (below 2**32 s), where doubles are spaced under half a microsecond,
    so the shortest text of the nearest double is the microsecond value itself
    (tests/integration/test_sink.py round-trips the edges). None (no valid timestamp) is 1970-01-01."""
    return [(us or 0) / US_PER_SECOND for us in values]


def whole_seconds(values: Sequence[int]) -> list[int]:
    """DateTime values (whole seconds) from microseconds."""
    return [us // US_PER_SECOND for us in values]


def decimal_texts(values: Sequence[Decimal]) -> list[str]:
    """Decimal(18, 6) values in JSON: the exact decimal text, never a float."""
    return [str(amount) for amount in values]


def json_objects(values: Sequence[tuple[tuple[str, int], ...]]) -> list[dict[str, int]]:
    """Map(String, ...) values from (key, value) pairs."""
    return [dict(pairs) for pairs in values]
