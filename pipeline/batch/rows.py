"""The per-record rows the processor appends for raw_records and seen_records, built by name.

They stay plain tuples in RawRow's and SeenRow's field order (store/sink.py): a NamedTuple's
constructor costs several times more, once per record. These builders take every field by
keyword, so a call site names what it puts where, and they are compiled with the processor, so a
keyword call costs what the tuple does. tests/unit/batch/test_rows.py ties each builder to its
NamedTuple's fields."""

from __future__ import annotations

from typing import Any


def raw_row(
    *, partition: int, offset: int, idx: int, account_id: str, kind: str, record_id: str, ts_us: int | None, payload: str
) -> tuple[Any, ...]:
    return (partition, offset, idx, account_id, kind, record_id, ts_us, payload)


def seen_row(*, account_id: str, record_id: str, digest: str, seq: int, rid_hash: int) -> tuple[Any, ...]:
    return (account_id, record_id, digest, seq, rid_hash)
