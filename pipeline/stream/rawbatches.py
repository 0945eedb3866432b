"""The input topic's records in raw batches from Faust's consumer, without Faust's per-event path.

Faust turns every Kafka record into a message, an event and a trip through a channel: the
fetcher awaits a callback per record inside `wait_first` (several tasks per record), and the
stream runs its processors per event. Measured here that path does 5,500-9,100 events/s with no
work at all (docs/faust-notes.md), so with one record per message (what an API gateway sends)
the worker ran at the speed of the naive agent whatever the batch processor did.

Faust stays the framework: the `billing` agent subscribes the topic, Faust's consumer owns the
group membership, the fetching (its aiokafka consumer, on Faust's consumer thread), the flow
control around rebalances and the offset commits. Only the hand-over changes: `RawBatches`
wraps the consumer's `_getmany` (the fetcher's one call into the aiokafka consumer) and takes
the input topic's records out of each fetch as the lists aiokafka returned, before Faust would
make events of them. The agent takes them in batches of up to `max_records` records (the rule
of `batching.take_batches`: full, or `within` after the previous batch once the buffer stopped
growing for `settle`), and acknowledges a batch's offsets into the consumer's own bookkeeping
(`_acked`, what `Consumer.ack` fills) once it is written, so Faust commits exactly the offsets
it committed before: those of batches billed and announced.

Around a rebalance: a batch handed out is tracked in the consumer's `_unacked_messages`, so
Faust's `wait_empty` (before it commits and gives partitions up) waits for it as it waited for
events; records fetched under an older consumer generation, or while the flow is stopped, are
dropped, as Faust's `getmany` drops them (Faust seeks every assigned partition back to its
committed offset when the flow resumes, so they are fetched again). The buffer is bounded: a
fetch waits while `max_buffered` records are waiting, as a full stream buffer makes Faust wait.

Uses private attributes of faust-streaming 0.15.3 (pinned in pyproject.toml): `_getmany`,
`_acked`, `_acked_index`, `_n_acked`, `_committed_offset`, `_unacked_messages`,
`_waiting_for_ack`. tests/integration (two workers, restarts) cover the protocol.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from pipeline.batch.framing import RS
from pipeline.batch.processor import Message, message_headers

SETTLE_S = 0.05  # as batching.SETTLE_S


def raw_batches_enabled() -> bool:
    """BILLING_RAW_BATCHES=0 puts the worker back on Faust's per-event stream (take_batches)."""
    return os.environ.get("BILLING_RAW_BATCHES", "1").lower() not in ("0", "false", "no", "off")


class InFlight:
    """Stands for a batch's records in Faust's set of unacknowledged messages (which `wait_empty`
    waits on): `acked` once the batch is written and its offsets acknowledged."""

    __slots__ = ("acked", "refcount", "records", "__weakref__")

    def __init__(self, records: int) -> None:
        self.acked = False
        self.refcount = 1
        self.records = records

    def __repr__(self) -> str:
        return f"<raw batch of {self.records} records, acked={self.acked}>"


@dataclass
class RawBatch:
    messages: list[Message]
    offsets: dict[Any, list[int]]  # TP -> offsets of the batch, in log order
    stamps: list[float]  # the records' Kafka timestamps (Unix seconds): publish-to-queryable latency
    generation: int
    in_flight: InFlight = field(default_factory=lambda: InFlight(0))


def _records_in(value: bytes | None) -> int:
    """How many records a message holds (as processor._units counts them)."""
    return value.count(RS) if value and value[:1] == RS else 1


class RawBatches:
    """Raw record batches of one topic, from the Faust app's consumer (module doc)."""

    def __init__(
        self, app: Any, topic: str, max_records: int, within: float, settle: float = SETTLE_S, max_buffered: int | None = None
    ) -> None:
        self.app = app
        self.topic = topic
        self.max_records = max(1, max_records)
        self.within = within
        self.settle = settle
        self.max_buffered = max_buffered or self.max_records  # one batch ahead: a worker's memory stays bounded
        self._chunks: deque[tuple[int, Any, list[Any], int]] = deque()  # (generation, tp, aiokafka records, records held)
        self._buffered = 0  # records in _chunks
        self._grew = asyncio.Event()
        self._space = asyncio.Event()
        self._installed: Any = None

    # -- the fetch side ----------------------------------------------------------------------
    def install(self) -> None:
        """Wrap the consumer's `_getmany` (once per consumer; the consumer exists once the app runs)."""
        consumer = self.app.consumer
        if self._installed is consumer:
            return
        original = consumer._getmany

        async def getmany(active_partitions: Any, timeout: float) -> Any:
            generation = self.app.consumer_generation_id
            records = await original(active_partitions, timeout)
            mine = [tp for tp in records if tp.topic == self.topic]
            if not mine:
                return records
            taken = {tp: records.pop(tp) for tp in mine}
            if self.app.consumer_generation_id != generation or not consumer.flow_active:
                return records  # dropped, as Faust's getmany drops them: fetched again after the seek
            for tp, chunk in taken.items():
                if chunk:
                    held = sum(_records_in(r.value) for r in chunk)
                    self._chunks.append((generation, tp, chunk, held))
                    self._buffered += held
            self._grew.set()
            while self._buffered >= self.max_buffered and consumer.flow_active and not self.app.should_stop:
                self._space.clear()
                try:
                    await asyncio.wait_for(self._space.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass
            return records

        consumer._getmany = getmany
        self._installed = consumer

    # -- the agent side ----------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[RawBatch]:
        """Batches in fetch order (each partition's records in offset order), forever."""
        loop = asyncio.get_running_loop()
        last_handed_out = loop.time()
        while not self.app.should_stop:
            self.install()
            await self._wait_for_batch(last_handed_out)
            batch = self._take()
            if batch is None:
                continue
            last_handed_out = loop.time()
            self.app.consumer._unacked_messages.add(batch.in_flight)
            self._mark_inbound(batch)
            yield batch

    def _mark_inbound(self, batch: RawBatch) -> None:
        """Tell Faust's monitor that the stream of these partitions is processing, as a stream does
        per event: its consumer thread otherwise logs "Stream has not started processing" errors
        every few minutes for partitions whose records never become events."""
        monitor = self.app.monitor
        if monitor is not None:
            now = time.monotonic()
            for tp in batch.offsets:
                monitor.stream_inbound_time[tp] = now

    async def _wait_for_batch(self, last_handed_out: float) -> None:
        """Until `max_records` are buffered, or `within` has passed, or (from `within` after the
        previous batch on) the buffer holds records and has stopped growing for `settle`, or has
        been due for `settle` already: under a steady load it never stops growing, and after a
        batch that took longer than `within` the next one waited the whole `within` again (0.2 s
        of every cycle at 2,000 single-record messages/s, measured into publish-to-queryable
        latency). Batches still come at most every `within`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.within
        due_at = last_handed_out + self.within
        while self._buffered < self.max_records and not self.app.should_stop:
            now = loop.time()
            if now >= deadline:
                return
            due = now >= due_at
            size = self._buffered
            self._grew.clear()
            try:
                await asyncio.wait_for(self._grew.wait(), timeout=min(deadline - now, self.settle) if due else due_at - now)
            except asyncio.TimeoutError:
                pass
            if due and size and (self._buffered == size or loop.time() >= due_at + self.settle):
                return

    def _take(self) -> RawBatch | None:
        """Whole chunks up to `max_records` records (at least one chunk), minus anything of an older
        generation or fetched while the flow is stopped (module doc)."""
        consumer = self.app.consumer
        generation = self.app.consumer_generation_id
        taken: list[tuple[int, Any, list[Any], int]] = []
        count = 0
        while self._chunks and (not taken or count + self._chunks[0][3] <= self.max_records):
            chunk = self._chunks.popleft()
            count += chunk[3]
            taken.append(chunk)
        self._buffered -= count
        self._space.set()
        if not consumer.flow_active:
            self._chunks.clear()
            self._buffered = 0
            return None
        messages: list[Message] = []
        stamps: list[float] = []
        offsets: dict[Any, list[int]] = {}
        for chunk_generation, tp, records, _ in taken:
            if chunk_generation != generation:
                continue
            # headers: `billing publish` names a line it could not read (processor._origin)
            messages += [Message(r.partition, r.offset, r.key, r.value, message_headers(r.headers) if r.headers else ()) for r in records]
            stamps += [r.timestamp / 1000 for r in records if r.timestamp is not None and r.timestamp >= 0]
            offsets.setdefault(tp, []).extend(r.offset for r in records)
        if not messages:
            return None
        return RawBatch(messages, offsets, stamps, generation, InFlight(count))

    def ack(self, batch: RawBatch) -> None:
        """The batch's offsets acknowledged, as `Consumer.ack` acknowledges each message's (Faust's
        commit then takes the highest offset below which everything is acknowledged)."""
        consumer = self.app.consumer
        assigned = consumer.assignment()
        with ack_lock:
            for tp, offsets in batch.offsets.items():
                if tp not in assigned:  # given up meanwhile: the next owner reads them again
                    continue
                committed = consumer._committed_offset[tp]
                index = consumer._acked_index[tp]
                fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
                index.update(fresh)
                consumer._acked[tp].extend(fresh)
                consumer._n_acked += len(fresh)
            batch.in_flight.acked = True
            consumer._unacked_messages.discard(batch.in_flight)
            notify(consumer._waiting_for_ack)
