"""Pause Python's cyclic garbage collector while a batch is folded and written.

A batch allocates about ten objects per record (parsed record, facts, rows) that all live until
the batch is written, and frees them together by reference counting: none of them form cycles.
With the collector on, those survivors push it into repeated full collections that walk the whole
heap; measured with `python -m bench`, that cost about 30% of the worker's time (13.7k -> 19.5k
records/s on 200,000 records with it paused). Cycles created meanwhile are collected once the
batch is done. Reentrant and safe across threads: the collector runs again when the last
paused section ends, and stays off if something else had switched it off.

What survives a batch (states, their lines and windows) is then parked out of the collector's
sight (`park_survivors`): collecting the batch's young generation instead walked every object
the batch had allocated and still held, 6% of the folding thread on gateway traffic (py-spy, one
record per message, 100,000 accounts). Parked objects are only looked at again by a full
collection, which finds the cycles that died meanwhile. That collection walks every state and
holds Python's lock throughout, in which no record is billed: 1.3 s at 100,000 cached accounts
(1.5 million objects) until session 19; about half that since, with each state's hour and minute
sets held as tuples (which leave the collector's sight) and idle accounts' rate windows dropped
(processor._shed_idle_windows). So it runs rarely, more rarely while it finds little
(`next_full_after`), and early when the worker is idle (`collect_while_idle`), so that its pause
falls where it delays nothing.
The cycles it used to find were closed connections, a Python 3.11 flaw that
`release_closed_transports` mends; with it, each full collection of a gateway run and the
console's polling found none.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger(__name__)
_lock = threading.Lock()
_depth = 0
_was_enabled = False
FULL_EVERY_S = 300.0  # the first interval between full collections, and the one after garbage was found
FULL_EVERY_MAX_S = 4 * 3600.0
LITTLE_GARBAGE = 1_000  # objects: at most some 100 kB held between two collections
IDLE_S = 10.0  # no batch for this long: a full collection due within half its interval runs now
_last_full = time.monotonic()
_full_every_s = FULL_EVERY_S


@contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def next_full_after(interval_s: float, found: int) -> float:
    """The wait before the next full collection: twice the last (up to FULL_EVERY_MAX_S) when it
    found little garbage, else FULL_EVERY_S again. So a worker that leaks nothing stalls for it
    once every few hours instead of every 5 minutes, and one that leaks cycles is collected every
    5 minutes again once a collection finds them (a leak that starts during a long interval is
    held for at most FULL_EVERY_MAX_S before that)."""
    return min(interval_s * 2, FULL_EVERY_MAX_S) if found < LITTLE_GARBAGE else FULL_EVERY_S


def park_survivors() -> None:
    """Move every object alive now out of the collector's generations (gc.freeze, O(1)), or, once
    the interval is up, bring them back and collect everything: cycles are found late, never lost."""
    if time.monotonic() - _last_full < _full_every_s:
        gc.freeze()
        return
    _collect_everything()


def collect_while_idle(idle_s: float) -> bool:
    """The next full collection now, early, when the worker has had no batch for IDLE_S and at
    least half its interval has passed: its 1-2 s then fall in a quiet moment instead of on the
    first batch of the next burst (measured: the first one, 300 s after start, landed in the
    latency phase of a bench run and made its p99 2.3-4 s). It counts as the scheduled one. A
    worker that is never idle keeps the schedule. Call it on the thread that folds batches (never
    beside a batch: that thread parks the survivors). Returns whether it collected."""
    if idle_s < IDLE_S or time.monotonic() - _last_full < _full_every_s / 2:
        return False
    _collect_everything()
    return True


def _collect_everything() -> None:
    global _last_full, _full_every_s
    now = _last_full = time.monotonic()
    walked = gc.get_freeze_count()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()  # the survivors parked again at once (an idle worker parks nothing until its next batch)
    _full_every_s = next_full_after(_full_every_s, found)
    took = time.monotonic() - now
    log.info("full garbage collection: %.2f s over %d objects, %d found; the next in %.0f s", took, walked, found, _full_every_s)


def release_closed_transports() -> None:
    """Python 3.11's socket transports never die by reference counting: each keeps a bound method
    of itself (`_read_ready_cb`), a cycle that only the collector breaks (CPython gh-100348, mended
    in 3.12). Every connection to the worker's API became such a cycle; parked between batches, 75
    to 160 of them were found by each full collection 20 s apart while the console's API was polled,
    and that collection is what stalls the worker. Dropping the method once the connection is lost
    (as 3.12's `close` does) lets them go at once. A no-op from 3.12 on; idempotent."""
    if sys.version_info >= (3, 12):
        return
    from asyncio import selector_events

    transport: Any = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]  # private, as the mend
    if getattr(transport, "_billing_releases_callbacks", False):
        return
    lost = transport._call_connection_lost

    def _call_connection_lost(self: Any, exc: BaseException | None) -> None:
        try:
            lost(self, exc)
        finally:
            self._read_ready_cb = None

    transport._call_connection_lost = _call_connection_lost
    transport._billing_releases_callbacks = True
