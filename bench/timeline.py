"""Where a unit's time goes between the three things a worker does at once: `--timeline` of
`python -m bench.gateway_processor`.

A worker has one folding thread (parse, fold, encode: Python, under the GIL), one reader thread
(the engine's reads, then Python turning their rows into states) and one sink thread (the engine's
inserts, without the GIL). The per-phase totals (`phases_s`) say how long the folding thread spent
in each phase, not what ran beside what. This records when each read, encode and write ran, so
that a run shows which of them overlap and how long the engine sat idle while Python worked (and
the other way round); and it probes the GIL: a thread that asks for it every millisecond notes
every stretch over `HELD_MS` it could not get it. Compiled (mypyc) code never offers the GIL to
another thread on its own, so those stretches are the folding or reader thread's compiled work.

    python -m bench.gateway_processor --accounts 100000 --records 200000 --timeline
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

from pipeline.store.storage import ClickHouseStorage

HELD_MS = 20.0  # a GIL stretch worth noting: four switch intervals of the interpreter's default 5 ms

Interval = tuple[str, float, float]  # (kind, start, end) in perf_counter seconds


def union_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """The length of the union of (start, end) spans: the time at least one of them ran."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def clipped(spans: Iterable[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """The parts of `spans` inside [start, end]."""
    return [(max(s, start), min(e, end)) for s, e in spans if e > start and s < end]


class Timeline:
    """Intervals recorded from any thread; `summary` over a window of the run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.intervals: list[Interval] = []

    def add(self, kind: str, start: float, end: float) -> None:
        with self._lock:
            self.intervals.append((kind, start, end))

    def spans(self, *kinds: str) -> list[tuple[float, float]]:
        with self._lock:
            return [(s, e) for k, s, e in self.intervals if k in kinds]

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Busy seconds per kind within [start, end], and how the engine's reads and writes fill it."""
        wall = max(end - start, 1e-9)
        reads, writes = clipped(self.spans("read"), start, end), clipped(self.spans("write"), start, end)
        read_s, write_s, engine = union_seconds(reads), union_seconds(writes), union_seconds(reads + writes)
        return {
            "wall_s": round(wall, 3),
            "read_s": round(read_s, 3),
            "encode_s": round(union_seconds(clipped(self.spans("encode"), start, end)), 3),
            "write_s": round(write_s, 3),
            "engine_busy_share": round(engine / wall, 3),  # a read or a write running
            "reads_beside_writes_s": round(read_s + write_s - engine, 3),
            "gil_held_s": round(union_seconds(clipped(self.spans("gil"), start, end)), 3),  # stretches over HELD_MS
        }

    def rows(self, start: float, batches: list[tuple[float, float]]) -> list[str]:
        """One line per batch: when its read, encode and write ran, in seconds from the batch's start
        (a write left in flight ends in the next batch's time)."""
        lines = []
        for number, (b_start, b_end) in enumerate(batches, 1):
            cells = [f"{number:3d} {b_start - start:7.2f}s {b_end - b_start:5.2f}s"]
            for kind in ("read", "encode", "write"):
                spans = [(s, e) for s, e in self.spans(kind) if b_start <= s < b_end]
                cells.append(" ".join(f"{kind} +{s - b_start:.2f}..{e - b_start:.2f}" for s, e in spans) or f"{kind} -")
            lines.append("  ".join(cells))
        return lines


class TimedStorage(ClickHouseStorage):
    """The worker's storage, each read, encode and write recorded on a Timeline."""

    def __init__(self, timeline: Timeline, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeline = timeline

    def _timed(self, kind: str, fn: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timeline.add(kind, started, time.perf_counter())

    def encode(self, rows: Any) -> Any:
        return self._timed("encode", super().encode, rows)

    def send(self, encoded: Any) -> None:
        self._timed("write", super().send, encoded)

    def load_states(self, accounts: Any) -> Any:
        return self._timed("read", super().load_states, accounts)

    def load_seen(self, wanted: Any) -> Any:
        return self._timed("read", super().load_seen, wanted)

    def load_lines(self, account_hours: Any, max_seq: Any) -> Any:
        return self._timed("read", super().load_lines, account_hours, max_seq)

    def load_windows(self, account_minutes: Any, max_seq: Any) -> Any:
        return self._timed("read", super().load_windows, account_minutes, max_seq)


class GilProbe:
    """A daemon thread that sleeps a millisecond at a time; a wake-up later than HELD_MS means
    another thread held the GIL all that while (recorded as a "gil" interval)."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gil-probe", daemon=True)

    def start(self) -> "GilProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            if (now - last) * 1000 > HELD_MS:
                self.timeline.add("gil", last, now)
            last = now
