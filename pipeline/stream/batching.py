"""Batches of events from a Faust stream, acknowledged only after the batch is handled.

Faust's `Stream.take_events(max, within)` waits up to `within` for `max` events after every
batch. Draining a backlog, the batch after a long one finds the rest of the backlog already
fetched but fewer than `max` events, and still waits the whole `within` (measured: 0.2 s idle
between two 2.7 s batches, 3.5% of a 200,000-record drain). `take_batches` keeps take_events'
contract (at most `max` events, never more than `within` of waiting for one batch, events acked
once the consumer asks for the next batch, so Faust commits only handled offsets) and adds one
rule: once `within` has passed since the previous batch was handed out, a buffer that has stopped
growing for `settle` seconds is handed out at once. Under a steady light load batches still come
at most every `within`, which keeps ClickHouse's inserts few; after a long batch the next starts
without the idle wait.

With `auto_ack=False` the caller acknowledges each batch's events itself (`stream.ack(event)`, in
order), possibly after asking for the next batch: the worker hands a batch's last write to
ClickHouse and starts on the next batch while it runs, and acknowledges once the write is in.

It mirrors take_events of faust-streaming 0.15.3 (pinned in pyproject.toml): the same buffering
processor, passive consumption and acknowledgement, only the wait differs.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, Sequence

from faust.types import EventT, StreamT
from mode.utils.aiter import aiter
from mode.utils.futures import notify

# A buffer that has not grown for this long holds what the consumer had fetched. Draining a
# backlog, the gap between two fetch responses can pass 10 ms: with 10 ms, a 200,000-record
# drain was cut into three batches in 3 of 10 runs ((d) 43,800-47,200 against 46,600-49,100/s in
# two); with 50 ms, 8 runs of 8 took two (45,900-50,000/s).
SETTLE_S = 0.05


def take_batches(
    stream: StreamT, max_: int, within: float, settle: float = SETTLE_S, auto_ack: bool = True
) -> AsyncGenerator[Sequence[EventT], None]:
    """`stream.take_events(max_, within)` without the idle wait after a long batch (module doc)."""
    agen = _take_batches(stream, max_, within, settle, auto_ack)
    stream._active_agens.add(agen)  # type: ignore[attr-defined]  # closed by Stream.on_stop, as take_events' are
    return agen


async def _take_batches(stream: Any, max_: int, within: float, settle: float, auto_ack: bool) -> AsyncGenerator[Sequence[EventT], None]:
    buffer: list[Any] = []
    events: list[EventT] = []
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    stream_enable_acks: bool = stream.enable_acks
    channel_it = aiter(stream.channel)
    loop = asyncio.get_running_loop()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming
        try:
            if buffer_consuming is not None:  # a batch is being handled: wait until it is acked
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            events.append(event)
            if len(buffer) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # never more than max_ in one batch
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # events are acked after the batch is handled: here, or by the caller
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    last_handed_out = loop.time()  # the first batch waits `within`, as take_events' does
    try:
        while not stream.should_stop:
            await _wait_for_batch(stream, buffer, buffer_full, within, settle, last_handed_out)
            if not buffer:
                continue
            buffer_consuming = loop.create_future()
            try:
                last_handed_out = loop.time()
                yield list(events)
            finally:
                buffer.clear()
                if auto_ack:
                    for event in events:
                        await stream.ack(event)
                events.clear()
                notify(buffer_consuming)
                buffer_full.clear()
                buffer_consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)


async def _wait_for_batch(
    stream: Any, buffer: list[Any], buffer_full: asyncio.Event, within: float, settle: float, last_handed_out: float
) -> None:
    """Until the buffer is full, or `within` has passed, or (from `within` after the previous
    batch on) the buffer holds events and has stopped growing for `settle`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    due_at = last_handed_out + within  # <= deadline
    while not buffer_full.is_set() and not stream.should_stop:
        now = loop.time()
        if now >= deadline:
            return
        due = now >= due_at
        size = len(buffer)
        await stream.wait_for_stopped(buffer_full, timeout=min(deadline - now, settle) if due else due_at - now)
        if due and size and len(buffer) == size:
            return
