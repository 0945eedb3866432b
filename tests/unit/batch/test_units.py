"""How a batch is cut into units (each folded, then written beside the next unit's fold): whole
messages in log order, as few units as the bound allows, and about the same size, so that no
small last unit waits for the write of a big one before it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.batch.framing import encode_group
from pipeline.batch.processor import Message, _units


def message(offset: int, records: int) -> Message:
    return Message(0, offset, b"acc", encode_group([b'{"n": %d}' % i for i in range(records)]))


def sizes(units: list[list[Message]]) -> list[int]:
    return [sum(m.value.count(b"\x1e") or 1 for m in unit) for unit in units]


def test_a_batch_just_over_the_bound_is_cut_in_halves_not_into_a_full_unit_and_a_crumb() -> None:
    batch = [message(i, 200) for i in range(273)]  # 54,600 records, bound 50,000
    assert sizes(list(_units(batch, 50_000))) == [27_400, 27_200]


def test_a_batch_under_the_bound_is_one_unit_and_one_message_over_it_is_its_own() -> None:
    assert sizes(list(_units([message(i, 200) for i in range(10)], 50_000))) == [2_000]
    assert sizes(list(_units([message(0, 5), message(1, 40), message(2, 5)], 30))) == [5, 40, 5]


@given(st.lists(st.integers(1, 60), min_size=1, max_size=60), st.integers(1, 200))
def test_units_are_whole_messages_in_order_and_bounded(records: list[int], bound: int) -> None:
    batch = [message(i, n) for i, n in enumerate(records)]
    units = list(_units(batch, bound))
    assert [m for unit in units for m in unit] == batch  # every message once, in log order
    assert all(size <= bound or len(unit) == 1 for size, unit in zip(sizes(units), units))


@given(st.lists(st.integers(1, 20), min_size=1, max_size=400), st.integers(200, 1000))
def test_small_messages_make_the_fewest_units_of_about_the_same_size(records: list[int], bound: int) -> None:
    got = sizes(list(_units([message(i, n) for i, n in enumerate(records)], bound)))
    fewest = -(-sum(records) // bound)
    assert len(got) in (fewest, fewest + 1)
    assert max(got) - min(got) <= max(sum(records) // fewest // 2, 2 * max(records))
