"""A unit's write on side-by-side lanes keeps the commit protocol: a step starts only once every
insert of the step before it is in, and a failure is raised only once no insert of its step is
still running (the batch's retry must not race a write of the failed attempt)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pipeline.store import sink
from pipeline.store.sink import Encoded, Insert, InsertLanes


class Recorder:
    """Stands in for ClickHouse clients: logs each insert's start and end, sleeps or refuses as told."""

    def __init__(self, slow: dict[str, float] | None = None, refuse: set[str] | None = None) -> None:
        self.slow = slow or {}
        self.refuse = refuse or set()
        self.events: list[tuple[str, str]] = []
        self.clients: list[Any] = []
        self.closed = 0
        self._lock = threading.Lock()

    def connect(self) -> Any:
        recorder = self

        class Client:
            def raw_insert(self, table: str, columns: Any, body: bytes, **kwargs: Any) -> None:
                recorder.log("start", table)
                time.sleep(recorder.slow.get(table, 0.0))
                if table in recorder.refuse:
                    recorder.log("refused", table)
                    raise ValueError(f"{table} refuses this value (injected)")
                recorder.log("end", table)

            def close(self) -> None:
                recorder.closed += 1

        client = Client()
        self.clients.append(client)
        return client

    def log(self, what: str, table: str) -> None:
        with self._lock:
            self.events.append((what, table))


def _insert(table: str) -> Insert:
    return Insert(table, ["a"], b"[[1]]", 1)


def _unit() -> Encoded:
    return Encoded(
        [
            [_insert("raw_records"), _insert("seen_records"), _insert("priced_usage"), _insert("bill_lines_check")],
            [_insert("account_state")],
            [_insert("bill_lines"), _insert("rate_windows")],
            [_insert("partition_progress")],
        ],
        1,
    )


def test_a_step_starts_after_every_insert_of_the_step_before_it() -> None:
    recorder = Recorder(slow={"seen_records": 0.1, "bill_lines": 0.05})
    lanes = InsertLanes(recorder.connect, 3)
    try:
        sink.send(recorder.connect(), _unit(), lanes)
    finally:
        lanes.close()
    order = [table for what, table in recorder.events if what in ("start", "end")]
    assert order.index("account_state") > max(order.index(t) for t in ("raw_records", "seen_records", "priced_usage", "bill_lines_check"))
    # the slow insert ended before the commit point started
    assert recorder.events.index(("end", "seen_records")) < recorder.events.index(("start", "account_state"))
    assert recorder.events.index(("end", "bill_lines")) < recorder.events.index(("start", "partition_progress"))
    assert sorted(t for w, t in recorder.events if w == "end") == sorted(i.table for i in _unit().inserts)
    assert 2 <= len(recorder.clients) <= 4  # the lanes' own clients (one per lane used) and the caller's


def test_a_failure_is_raised_after_its_step_ends_and_nothing_later_starts() -> None:
    recorder = Recorder(slow={"seen_records": 0.2}, refuse={"priced_usage"})
    lanes = InsertLanes(recorder.connect, 3)
    try:
        with pytest.raises(ValueError, match="priced_usage refuses"):
            sink.send(recorder.connect(), _unit(), lanes)
        # the slow insert of the failed step had ended when the failure came out
        assert ("end", "seen_records") in recorder.events
        assert not any(table == "account_state" for _, table in recorder.events)  # the commit point never started
    finally:
        lanes.close()
    assert recorder.closed == len(recorder.clients) - 1  # every lane's client closed (the caller's is not the lanes')


def test_the_first_failure_in_the_step_order_is_the_one_raised() -> None:
    recorder = Recorder(slow={"raw_records": 0.1}, refuse={"raw_records", "bill_lines_check"})
    lanes = InsertLanes(recorder.connect, 3)
    try:
        with pytest.raises(ValueError, match="raw_records refuses"):
            lanes.insert_all(_unit().steps[0])
    finally:
        lanes.close()
