"""aggregate_rows: the sink's aggregate rows and snapshot rows, tied to the layouts sink.py names."""

from __future__ import annotations

from decimal import Decimal

import orjson

from pipeline.batch import aggregate_rows
from pipeline.core.state import LINE_COUNTS, AccountState, KeyState, Line, Window
from pipeline.store.sink import LINE_ROW_FIELDS, StateRow, WindowRow

H1 = 1_726_588_800_000_000


def a_line() -> Line:
    return Line(
        requests=1,
        input_tokens=2,
        output_tokens=3,
        free_tokens=4,
        billed_input_tokens=5,
        billed_output_tokens=6,
        quantity=7,
        amount=Decimal("0.123456"),
        revision=9,
    )


def test_a_line_row_names_its_key_counts_amount_and_revision_in_the_tables_field_order() -> None:
    [row] = aggregate_rows.line_rows({("acc", (H1, "k1", "xingchen-plus")): a_line()})
    named = dict(zip(LINE_ROW_FIELDS, row, strict=True))
    assert (named["account_id"], named["hour"], named["api_key_id"], named["item"]) == ("acc", H1, "k1", "xingchen-plus")
    assert [named[name] for name in LINE_COUNTS] == [1, 2, 3, 4, 5, 6, 7]
    assert (named["amount"], named["revision"]) == (Decimal("0.123456"), 9)


def test_a_window_row_is_in_window_row_field_order() -> None:
    [row] = aggregate_rows.window_rows({("acc", ("qpm", 60_000_000)): Window(requests=3, tokens=40, revision=8)})
    assert WindowRow(*row) == WindowRow("acc", "qpm", 60_000_000, 3, 40, 8)


def test_a_redo_groups_each_accounts_rows_per_table_with_money_as_exact_text() -> None:
    tables = {
        "bill_lines": aggregate_rows.line_rows({("a", (H1, "k", "m")): a_line(), ("b", (H1, "k", "m")): a_line()}),
        "rate_windows": aggregate_rows.window_rows({("a", ("qps", 1_000_000)): Window(1, 2, 9)}),
    }
    texts = aggregate_rows.redo_texts(tables)
    assert set(texts) == {"a", "b"}
    redo_a = orjson.loads(texts["a"])
    assert set(redo_a) == {"bill_lines", "rate_windows"}
    assert redo_a["bill_lines"][0][LINE_ROW_FIELDS.index("amount")] == "0.123456"
    assert set(orjson.loads(texts["b"])) == {"bill_lines"}


def test_a_state_row_carries_the_snapshot_its_redo_and_its_log_position() -> None:
    state = AccountState("acc", seq=12, keys={"k": KeyState(5)}, log_epoch="e1", log_partition=3, log_offset=77)
    without_redo = AccountState("other", seq=1)
    rows = aggregate_rows.state_rows({"acc": state, "other": without_redo}, {"acc": '{"bill_lines":[]}'})
    first, second = (StateRow(*row) for row in rows)
    assert (first.account_id, first.seq, first.redo) == ("acc", 12, '{"bill_lines":[]}')
    assert (first.log_epoch, first.log_partition, first.log_offset) == ("e1", 3, 77)
    assert AccountState.from_json(first.state).keys == {"k": KeyState(5)}
    assert second.redo == ""
