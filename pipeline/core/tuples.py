"""NamedTuples built on the per-record path (records, facts, sink rows)."""

from __future__ import annotations

from typing import Any, TypeVar

F = TypeVar("F", bound=tuple[Any, ...])


def namedtuple_of(kind: type[F], *values: Any) -> F:
    """kind(*values) for a NamedTuple (a record, a fact, a sink row), built by tuple.__new__.

    A NamedTuple's generated __new__ is interpreted Python even when called from compiled code
    (setup.py): 0.41 us against 0.14 us here, once or twice per record. The values are
    positional, in field order, one per field (defaults are not filled in)."""
    if len(values) != len(kind._fields):  # type: ignore[attr-defined]
        raise TypeError(f"{kind.__name__} has {len(kind._fields)} fields, got {len(values)} values")  # type: ignore[attr-defined]
    return tuple.__new__(kind, values)
