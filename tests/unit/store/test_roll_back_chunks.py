"""The roll back's statements on a cluster carry their values in their text: chunks under a size."""

from __future__ import annotations

from clickhouse_connect.driver.binding import format_str

from pipeline.store.statestore import _text_chunks


def _text_bytes(chunk: list[str]) -> int:
    """What a chunk writes into a statement: every id twice (the IN list and the transform's), its seq."""
    return 2 * sum(len(format_str(acc).encode()) + 2 for acc in chunk) + 22 * len(chunk)


def test_chunks_keep_every_account_in_order_within_the_budget() -> None:
    accounts = [f"acct-{i}" + "'\\" * (i % 7) + "é" * (i % 3) for i in range(5_000)]
    chunks = list(_text_chunks(accounts, 20_000))
    assert [acc for chunk in chunks for acc in chunk] == accounts
    assert len(chunks) > 1 and all(_text_bytes(chunk) <= 20_000 for chunk in chunks)
    assert all(_text_bytes(chunk + [nxt[0]]) > 20_000 for chunk, nxt in zip(chunks, chunks[1:]))  # each as full as it can be


def test_an_account_larger_than_the_budget_is_a_chunk_of_its_own() -> None:
    assert list(_text_chunks(["a" * 100, "b", "c"], 70)) == [["a" * 100], ["b", "c"]]
    assert list(_text_chunks([], 50)) == []
