"""bench/timeline.py: the span arithmetic behind `bench.gateway_processor --timeline`."""

from __future__ import annotations

import random
import time

from bench.timeline import GilProbe, Timeline, clipped, union_seconds


def test_union_counts_overlapping_time_once() -> None:
    assert union_seconds([]) == 0.0
    assert union_seconds([(0.0, 1.0), (0.5, 2.0)]) == 2.0
    assert union_seconds([(0.0, 1.0), (2.0, 3.0)]) == 2.0
    assert union_seconds([(0.0, 3.0), (1.0, 2.0)]) == 3.0  # one inside another
    assert union_seconds([(2.0, 3.0), (0.0, 1.0), (0.5, 2.5)]) == 3.0  # unsorted


def test_clipped_keeps_only_the_window() -> None:
    assert clipped([(0.0, 2.0), (3.0, 4.0), (5.0, 6.0)], 1.0, 3.5) == [(1.0, 2.0), (3.0, 3.5)]


def test_summary_says_how_much_of_the_window_the_engine_worked_and_what_overlapped() -> None:
    timeline = Timeline()
    timeline.add("read", 0.0, 1.0)
    timeline.add("write", 0.5, 2.0)  # half a second beside the read
    timeline.add("encode", 2.0, 3.0)
    summary = timeline.summary(0.0, 4.0)
    assert summary["read_s"] == 1.0 and summary["write_s"] == 1.5 and summary["encode_s"] == 1.0
    assert summary["engine_busy_share"] == 0.5  # 2 of 4 seconds
    assert summary["reads_beside_writes_s"] == 0.5


def test_rows_place_each_span_in_its_batch() -> None:
    timeline = Timeline()
    timeline.add("read", 10.1, 10.3)
    timeline.add("write", 10.8, 11.4)  # starts in batch 1, ends in batch 2: listed under batch 1
    rows = timeline.rows(10.0, [(10.0, 11.0), (11.0, 12.0)])
    assert "read +0.10..0.30" in rows[0] and "write +0.80..1.40" in rows[0]
    assert "read -" in rows[1] and "write -" in rows[1]


def test_the_probe_notes_a_long_hold_of_the_gil_and_not_interpreted_work() -> None:
    timeline = Timeline()
    probe = GilProbe(timeline).start()
    time.sleep(0.02)
    deadline = time.perf_counter() + 0.2
    while time.perf_counter() < deadline:  # interpreted: offers the GIL every switch interval (5 ms)
        pass
    interpreted = [kind for kind, _, _ in timeline.intervals]
    values = [random.random() for _ in range(1_500_000)]
    started = time.perf_counter()
    values.sort()  # one C call that never lets go of the GIL, as compiled code does
    held_for = time.perf_counter() - started
    time.sleep(0.02)
    probe.stop()
    assert interpreted == []
    holds = [end - start for kind, start, end in timeline.intervals if kind == "gil"]
    assert held_for > 0.05 and holds and max(holds) >= held_for * 0.8
