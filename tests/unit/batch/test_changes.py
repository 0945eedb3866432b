"""changes.collect_changed: a unit's changed lines and windows, and an account-hour's totals over all its lines for the hours it changed."""

from __future__ import annotations

from decimal import Decimal

import orjson

from pipeline.batch.changes import collect_changed
from pipeline.core.state import AccountState, Line, Window
from pipeline.store import sink
from pipeline.store.sink import HOUR_TOTAL_FIELDS, BatchRows

H1, H2 = 1_726_588_800_000_000, 1_726_592_400_000_000


def line(requests: int, amount: str, revision: int, inp: int = 0, out: int = 0, quantity: int = 0) -> Line:
    return Line(
        requests=requests,
        input_tokens=inp,
        output_tokens=out,
        free_tokens=inp // 2,
        billed_input_tokens=inp - inp // 2,
        billed_output_tokens=out,
        quantity=quantity,
        amount=Decimal(amount),
        revision=revision,
    )


def test_a_changed_hour_is_summed_over_all_its_lines_and_an_unchanged_hour_is_not_written() -> None:
    state = AccountState("acc")
    state.add_lines(
        {
            (H1, "k1", "xingchen-plus"): line(3, "0.300000", 4, inp=100, out=50),  # written by an earlier unit
            (H1, "k2", "xingchen-max"): line(2, "1.000001", 7, inp=10, out=5),  # changed by this unit
            (H1, "k1", "plugin:text_to_image"): line(2, "0.400000", 6, quantity=5),
            (H2, "k1", "xingchen-plus"): line(1, "0.100000", 5, inp=1, out=1),  # an hour this unit did not touch
        }
    )
    rows = BatchRows()
    hours, minutes = collect_changed(rows, state, 5, (), ())
    assert [dict(zip(HOUR_TOTAL_FIELDS, r)) for r in rows.hour_totals] == [
        {
            "account_id": "acc",
            "hour": H1,
            "lines": 3,
            "calls": 5,
            "plugin_calls": 2,
            "input_tokens": 110,
            "output_tokens": 55,
            "free_tokens": 55,
            "billed_input_tokens": 55,
            "billed_output_tokens": 55,
            "plugin_units": 5,
            "amount": Decimal("1.700001"),
            "revision": 7,
        }
    ]
    assert sorted(key for _, key in rows.lines) == [(H1, "k1", "plugin:text_to_image"), (H1, "k2", "xingchen-max")]
    assert (hours, minutes) == ((H1,), ())
    again = BatchRows()
    assert collect_changed(again, state, 7, (H1,), ()) == ((H1,), ())  # nothing changed since: nothing to write
    assert again.hour_totals == [] and again.lines == {}


def test_the_windows_a_unit_changed_are_taken_with_their_minutes() -> None:
    state = AccountState("acc")
    second = H1 + 61_000_000  # 00:01:01 of H1
    state.windows.update({("qps", second): Window(1, 10, 3), ("qpm", H1 + 60_000_000): Window(4, 40, 6), ("tpm", H1): Window(2, 5, 2)})
    rows = BatchRows()
    hours, minutes = collect_changed(rows, state, 2, (), ())
    assert sorted(key for _, key in rows.windows) == [("qpm", H1 + 60_000_000), ("qps", second)]
    assert (hours, minutes) == ((), (H1 + 60_000_000,))  # two windows of one minute: the minute once
    assert rows.lines == {} and rows.hour_totals == []


def test_the_totals_are_encoded_with_the_lines_after_the_commit_point_which_carries_them() -> None:
    """The protocol changed with the merge-loss fix: the snapshot (commit point) goes before the
    aggregates, so none is ever written at an uncommitted revision, and its redo holds them."""
    state = AccountState("acc")
    key = (H1, "k1", "xingchen-plus")
    state.add_lines({key: line(1, "0.000001", 1)})
    rows = BatchRows(states={"acc": state}, lines={("acc", key): state.lines[key]})
    collect_changed(rows, state, 0, (), ())
    inserts = sink.encode(rows).inserts
    tables = [insert.table for insert in inserts]
    assert tables.index("account_state") < tables.index("bill_lines") < tables.index("bill_hour_totals")
    redo = sink.redo_inserts([orjson.loads(inserts[tables.index("account_state")].body)[3][0]])

    def columns(found: list[sink.Insert]) -> dict[str, tuple[list[str], list]]:  # all but the last: updated_at, the time of writing
        return {insert.table: (insert.columns[:-1], orjson.loads(insert.body)[:-1]) for insert in found}

    assert columns(redo) == columns([insert for insert in inserts if insert.table in ("bill_lines", "bill_hour_totals")])
