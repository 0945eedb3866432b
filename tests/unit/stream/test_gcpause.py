"""The collector's schedule and the connections it no longer has to find (stream/gcpause.py)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from pipeline.stream import gcpause
from pipeline.stream.gcpause import FULL_EVERY_MAX_S, FULL_EVERY_S, LITTLE_GARBAGE, next_full_after


def test_full_collections_grow_rare_while_they_find_little_and_come_back_when_they_find_garbage() -> None:
    interval = FULL_EVERY_S
    seen = []
    for _ in range(10):
        interval = next_full_after(interval, found=0)
        seen.append(interval)
    assert seen[:3] == [2 * FULL_EVERY_S, 4 * FULL_EVERY_S, 8 * FULL_EVERY_S]
    assert max(seen) == seen[-1] == FULL_EVERY_MAX_S  # capped: a leak that starts late is found within hours
    assert next_full_after(FULL_EVERY_MAX_S, found=LITTLE_GARBAGE - 1) == FULL_EVERY_MAX_S
    assert next_full_after(FULL_EVERY_MAX_S, found=LITTLE_GARBAGE) == FULL_EVERY_S


def _closed_connection_transports() -> list[weakref.ref]:
    """Open a real TCP connection to a local asyncio server, talk, close both ends; weak
    references to the two transports."""
    refs: list[weakref.ref] = []

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            refs.append(weakref.ref(writer.transport))
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refs.append(weakref.ref(writer.transport))
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the connection_lost callbacks

    asyncio.run(main())
    return refs


def test_a_closed_connection_is_freed_without_the_collector() -> None:
    """What the worker's API serves on every poll of the console: once closed, its transports are
    gone by reference counting alone. (On Python 3.11 without the mend, each stays in a cycle
    until a full collection, the one that stalls billing.)"""
    gcpause.release_closed_transports()
    gcpause.release_closed_transports()  # idempotent
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        refs = _closed_connection_transports()
        assert len(refs) == 2
        alive = [ref() for ref in refs if ref() is not None]
        assert alive == []
    finally:
        if was_enabled:
            gc.enable()


def test_an_idle_worker_runs_its_due_full_collection_early_and_keeps_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.monotonic()
    monkeypatch.setattr(gcpause, "_full_every_s", 300.0)
    monkeypatch.setattr(gcpause, "_last_full", now - 100)  # a third of the interval gone
    assert not gcpause.collect_while_idle(idle_s=60)  # too early: the schedule stands
    monkeypatch.setattr(gcpause, "_last_full", now - 200)  # two thirds gone
    assert not gcpause.collect_while_idle(idle_s=gcpause.IDLE_S - 1)  # not idle long enough
    scheduled: list[tuple[float, int]] = []

    def next_after(interval_s: float, found: int) -> float:
        scheduled.append((interval_s, found))
        return 1234.0

    monkeypatch.setattr(gcpause, "next_full_after", next_after)
    try:
        assert gcpause.collect_while_idle(idle_s=gcpause.IDLE_S)
        assert gcpause._last_full >= now  # it was the scheduled one, moved into the quiet moment:
        assert [interval for interval, _ in scheduled] == [300.0]  # the schedule goes on from it
        assert gcpause._full_every_s == 1234.0
        assert gc.get_freeze_count() > 0  # the survivors are parked again at once
        assert not gcpause.collect_while_idle(idle_s=3600)  # one per interval, however long the quiet
    finally:
        gc.unfreeze()
