"""When take_batches hands a batch out (pipeline/stream/batching.py), on a stand-in for the stream.

The margins are wide on purpose: these check which rule ended the wait (a `within` of 2 s against
a `settle` of 20 ms), not how fast anything is.
"""

from __future__ import annotations

import asyncio
import time

from pipeline.stream.batching import _wait_for_batch

WITHIN, SETTLE = 2.0, 0.02


class FakeStream:
    should_stop = False

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def _wait(buffer: list[int], since_last_batch: float, grow: list[float] | None = None, full_after: float | None = None) -> float:
    """Seconds _wait_for_batch waited; `grow`: delays after which one more event arrives."""

    async def run() -> float:
        full = asyncio.Event()
        loop = asyncio.get_running_loop()
        for delay in grow or []:
            loop.call_later(delay, buffer.append, 0)
        if full_after is not None:
            loop.call_later(full_after, full.set)
        started = time.monotonic()
        await _wait_for_batch(FakeStream(), buffer, full, WITHIN, SETTLE, loop.time() - since_last_batch)
        return time.monotonic() - started

    return asyncio.run(run())


def test_after_a_long_batch_a_buffer_that_stopped_growing_goes_out_without_the_idle_wait() -> None:
    assert _wait([1, 2, 3], since_last_batch=5.0) < WITHIN / 4


def test_it_waits_while_the_buffer_still_grows() -> None:
    waited = _wait([1], since_last_batch=5.0, grow=[0.01 * i for i in range(1, 30)])
    assert 0.25 < waited < WITHIN / 2  # until the events stopped coming, then no longer


def test_right_after_a_batch_it_waits_within_as_take_events_does() -> None:
    assert _wait([1, 2, 3], since_last_batch=0.0) > WITHIN * 0.9


def test_an_empty_buffer_waits_within() -> None:
    assert _wait([], since_last_batch=5.0) > WITHIN * 0.9


def test_a_full_buffer_goes_out_at_once() -> None:
    assert _wait([1], since_last_batch=0.0, full_after=0.05) < WITHIN / 4
