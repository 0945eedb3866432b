"""The processor's per-record row builders put every field where store/sink.py's NamedTuples say
(a swapped pair of arguments inside a builder would still type-check, and fail here)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import pytest

from pipeline.batch.rows import raw_row, seen_row
from pipeline.store.sink import RawRow, SeenRow


def distinct_values(fields: tuple[str, ...]) -> dict[str, Any]:
    """A value per field that no other field has, of the field's kind (ints or texts)."""
    numeric = {"partition", "offset", "idx", "ts_us", "seq", "rid_hash"}
    return {name: (1000 + i if name in numeric else f"value-of-{name}") for i, name in enumerate(fields)}


@pytest.mark.parametrize("build, row", [(raw_row, RawRow), (seen_row, SeenRow)], ids=["raw", "seen"])
def test_a_builder_puts_each_field_where_its_row_names_it(build: Callable[..., tuple[Any, ...]], row: type[NamedTuple]) -> None:
    assert tuple(inspect.signature(build).parameters) == row._fields
    values = distinct_values(row._fields)
    assert build(**values) == tuple(row(**values))
