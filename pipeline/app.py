"""The Faust worker: feeds the input topic to the batch processor in offset order.

Faust's per-event overhead is the bottleneck here (DESIGN §7), so the agent takes events in
batches, hands each batch to the framework-free `BatchProcessor`, and does no per-event work
of its own. ClickHouse access runs on one dedicated thread (chdb handles are not shared across
threads, and the event loop must keep heartbeating while a batch is written); the query API
uses the same thread, after any write in flight. A batch that cannot be written is retried with
backoff, never skipped: its offsets are not acknowledged until it is in ClickHouse.

A batch's last write is left in flight while the agent takes the next batch, whose first unit is
parsed beside it (the folding thread would otherwise wait for ClickHouse at every batch's end). A
completion task per batch, chained in log order, waits for that write, publishes the batch's
outputs and only then acknowledges its events; if the write failed, it processes the batch
again (the next batch, finding the failure, waits for that and then goes again itself).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, TypeVar

import faust

from pipeline import CORE_BUILD, api, metrics, outputs_json, records
from pipeline.batching import take_batches
from pipeline.catalog import load_catalog
from pipeline.chclient import ClickHouseUnavailable, connect, migrate, preload_insert_support
from pipeline.processor import BatchProcessor, BatchResult, EarlierWriteFailed, Message, OffsetGap
from pipeline.rawbatches import RawBatch, RawBatches, raw_batches_enabled
from pipeline.settings import Settings, redact
from pipeline.timestamps import format_ts
from pipeline.topics import ensure_all

log = logging.getLogger("billing.worker")
T = TypeVar("T")
MAX_BACKOFF_S = 30.0


def leave_group_at_generation_zero() -> None:
    """Tansu numbers a group's first generation 0, and aiokafka sends LeaveGroup only above 0: a
    stopped worker then lingers in the group and the next start waits 19-25 s for it to time out
    (measured, docs/faust-notes.md). Leave at generation 0 too; on Apache Kafka generations start
    at 1, so nothing changes there."""
    from aiokafka.consumer import group_coordinator as gc

    if getattr(gc.GroupCoordinator, "_billing_patched", False):
        return
    original = gc.GroupCoordinator._maybe_leave_group

    async def maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self._group_instance_id is None and self.member_id != gc.JoinGroupRequest.UNKNOWN_MEMBER_ID:
            try:
                await self._send_req(gc.LeaveGroupRequest(self.group_id, self.member_id))
            except gc.Errors.KafkaError as err:
                log.warning("LeaveGroup at generation 0 failed: %s", err)
        await original(self)

    gc.GroupCoordinator._maybe_leave_group = maybe_leave_group
    gc.GroupCoordinator._billing_patched = True


async def _ack_events(stream: faust.StreamT, events: list[Any]) -> None:
    for event in events:
        await stream.ack(event)


class Worker:
    """One `billing worker`: the Faust app, its processor and its query API."""

    def __init__(self, settings: Settings, bootstrap: str, epoch: str, on_api: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.epoch = epoch
        self.catalog = load_catalog(settings.catalog)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.client = self._db.submit(self._open_clickhouse).result()
        self.processor = BatchProcessor(self.client, self.catalog, epoch, auto_tick=settings.auto_tick,
                                        write_records=settings.write_records, max_states=settings.state_cache)
        self.on_api = on_api
        self.api_url: str | None = None
        self.stats: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.sink_seconds = 0.0
        self.write_wait_seconds = 0.0
        # wall clock (time.time()) of the first non-empty batch's arrival and of the latest batch's
        # write: with records already in the topic, their span is the worker's own throughput,
        # free of its startup and group join (the bench reads them from /healthz)
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.last_offsets: dict[int, int] = {}
        self.assigned: set[int] = set()
        self._completing: asyncio.Future[None] | None = None  # the latest batch's completion task
        self._nothing_owed = asyncio.Event()  # cleared while a batch whose last write failed is processed again
        self._nothing_owed.set()
        ensure_all(settings, bootstrap)
        leave_group_at_generation_zero()
        self.app = self._build_app(bootstrap)

    def _open_clickhouse(self) -> Any:
        """A server that is not up yet is waited for (backoff, logged); the embedded engine fails
        fast, since its only failure is another process holding it."""
        url, delay = self.settings.clickhouse_url, 0.5
        while True:
            try:
                client = connect(url)
                migrate(client)
                preload_insert_support()
                records.compile_validators()
                log.info("ClickHouse ready at %s", redact(url))
                return client
            except ClickHouseUnavailable as exc:
                if url.startswith("chdb:"):
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def on_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ClickHouse call on the ClickHouse thread."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _build_app(self, bootstrap: str) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=f"kafka://{bootstrap}",
            store="memory://",
            datadir=str(s.data_dir / "faust"),  # not Faust's default <app id>-data in the cwd
            topic_partitions=s.partitions,
            broker_session_timeout=6,  # Tansu holds JoinGroup for half of it (DESIGN §7)
            broker_heartbeat_interval=1,
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            topic_disable_leader=True,
            web_enabled=False,
            table_standby_replicas=0,
            producer_linger_ms=5,
        )
        topic = app.topic(s.input_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw", partitions=s.partitions)
        self.input_topic = topic
        self.status_topic = app.topic(s.status_topic, key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        self.violations_topic = app.topic(s.violations_topic, key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        worker = self
        # records in raw batches from Faust's consumer, not one event each (pipeline/rawbatches.py)
        raw = RawBatches(app, s.input_topic, s.write_records, s.batch_within_s) if raw_batches_enabled() else None

        @app.agent(topic, name="billing")
        async def billing(stream: faust.StreamT) -> None:
            try:
                if raw is not None:
                    async for batch in raw.batches():
                        await worker.handle_raw(raw, batch)
                else:
                    async for events in take_batches(stream, s.batch_size, s.batch_within_s, auto_ack=False):
                        await worker.handle(stream, events)
            except Exception as exc:
                # Faust would restart the agent and drop the events in flight (the offset-gap
                # check then stops us anyway): stop loudly at the cause instead.
                log.critical("billing agent failed: %r", exc)
                await app.crash(exc)
                raise

        @app.on_partitions_revoked.connect
        async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
            # another worker may own these accounts next: reload from ClickHouse when they return
            worker.assigned -= {tp.partition for tp in revoked if tp.topic == s.input_topic}
            await worker.on_db(worker.processor.forget)
            worker.processor.reset_positions()

        @app.on_partitions_assigned.connect
        async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
            worker.assigned = {tp.partition for tp in assigned if tp.topic == s.input_topic}

        @app.task
        async def start_api() -> None:
            await worker.start_api()

        return app

    async def handle(self, stream: faust.StreamT, events: list[Any]) -> None:
        """Process a batch and leave its completion (last write, outputs, acks) to a task, so that
        the next batch starts beside that write."""
        messages = [Message(e.message.partition, e.message.offset, e.message.key, e.message.value) for e in events]
        await self._handle(messages, functools.partial(_ack_events, stream, events))

    async def handle_raw(self, raw: RawBatches, batch: RawBatch) -> None:
        """`handle` for a raw batch (pipeline/rawbatches.py): acknowledged into Faust's consumer at once."""
        async def acknowledge() -> None:
            raw.ack(batch)

        await self._handle(batch.messages, acknowledge)

    async def _handle(self, messages: list[Message], acknowledge: Callable[[], Awaitable[None]]) -> None:
        if self.first_batch_at is None and messages:
            self.first_batch_at = time.time()
        # a batch whose last write failed is processed again before anything after it (the failure
        # may already be cleared in the processor, so the processor alone cannot tell this batch)
        await self._nothing_owed.wait()
        result = await self.process(messages, leave_last_write=True)
        self._completing = asyncio.ensure_future(self._complete(acknowledge, messages, result, self._completing))

    async def process(self, messages: list[Message], leave_last_write: bool = False) -> BatchResult:
        """Process a batch, retrying with backoff until it is applied (ClickHouse down, disk full:
        money is never skipped). An offset gap stops the worker."""
        delay = 0.5
        while True:
            try:
                started = time.perf_counter()
                result = await self.on_db(self.processor.process, messages, leave_last_write)
            except OffsetGap as exc:
                log.critical("%s", exc)
                await self.app.crash(exc)  # loud: the process exits non-zero, offsets stay where they were
                raise
            except EarlierWriteFailed:
                if leave_last_write and self._completing is not None:
                    # the previous batch's completion processes that batch again: this one follows it
                    await asyncio.shield(self._completing)
                continue  # (or a completion processing its own batch again: the failure is cleared now)
            except Exception as exc:  # ClickHouse down, disk full...: retry, never skip money
                self._failed(len(messages), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self.sink_seconds += time.perf_counter() - started
            self.write_wait_seconds += result.write_wait_s
            return result

    def _failed(self, messages: int, exc: BaseException, delay: float) -> None:
        self.stats["batch_failures"] += 1
        log.warning("batch of %d messages not written (%s); retrying in %.1fs", messages, str(exc)[:300], delay)

    async def _complete(self, acknowledge: Callable[[], Awaitable[None]], messages: list[Message], result: BatchResult,
                        previous: asyncio.Future[None] | None) -> None:
        """Once the batch's last write is in (after the batches before it): its outputs, then its
        acknowledgements, so that an offset is committed only for a batch billed and announced."""
        try:
            if previous is not None:
                await previous
            try:
                await asyncio.wrap_future(result.written)
            except Exception as exc:
                self._nothing_owed.clear()
                try:
                    self._failed(len(messages), exc, 0.5)
                    await asyncio.sleep(0.5)
                    result = await self.process(messages)
                finally:
                    self._nothing_owed.set()
            self._account(messages, result)
            await self.publish_outputs(result)
            await acknowledge()
        except Exception as exc:
            log.critical("billing agent failed completing a batch: %r", exc)
            await self.app.crash(exc)
            raise

    def _account(self, messages: list[Message], result: BatchResult) -> None:
        self.last_batch_at = time.time()
        self.stats["batches"] += 1
        self.reasons.update(result.reasons)
        self.stats["messages"] += len(messages)
        self.stats["records"] += sum(result.statuses.values())
        self.stats["skipped_redeliveries"] += result.skipped
        self.stats.update(result.statuses)
        self.last_offsets.update(result.last_offsets)

    async def read_db(self, fn: Callable[..., T], *args: Any) -> T:
        """An API call between two of the processor's writes: it sees every record written before
        it, no unit in part, and the batch being folded goes on meanwhile."""
        try:
            written = self.processor.read_between_writes(functools.partial(fn, *args))
        except RuntimeError:  # the processor is closed (the worker is stopping): nothing writes now
            return await self.on_db(fn, *args)
        return await asyncio.wrap_future(written)

    async def publish_outputs(self, result: BatchResult) -> None:
        """After the batch is in ClickHouse: status changes (compacted topic, for the API gateway),
        rate-limit violations (per account, in messages of bounded size), and clock ticks for idle
        accounts, encoded by the processor while its last write ran. Retried like the ClickHouse
        write: the batch is not done until they are out."""
        topics = {outputs_json.STATUS: self.status_topic, outputs_json.VIOLATIONS: self.violations_topic,
                  outputs_json.INPUT: self.input_topic}
        delay, done = 0.5, 0
        while done < len(result.outbound):
            message = result.outbound[done]
            topic = topics[message.destination]
            try:
                await topic.send(key=message.account_id.encode(), value=message.value)
            except Exception as exc:  # broker away: retry, the outputs must not be lost
                log.warning("could not publish to %s (%s); retrying in %.1fs", topic.get_topic_name(), str(exc)[:200], delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            done += 1

    async def start_api(self) -> None:
        web_app = api.build_app(lambda: self.client, self.catalog.free_quota_tokens, self.health, self.read_db, self.metrics)
        _, self.api_url = await api.serve(web_app, self.settings.api_host, self.settings.api_port)
        log.info("query API at %s", self.api_url)
        if self.on_api:
            self.on_api(self.api_url)

    def metrics(self) -> str:
        rows = []
        consumer = self.app.consumer if self.app.consumer is not None else None
        for partition, offset in sorted(self.last_offsets.items()):
            committed = highwater = None
            if consumer is not None:
                tp = faust.types.TP(self.settings.input_topic, partition)
                committed = consumer._committed_offset.get(tp)  # Faust keeps what it last committed
                try:
                    highwater = consumer.highwater(tp)
                except Exception:  # not assigned here any more, or no fetch yet
                    highwater = None
            rows.append((partition, offset, committed, highwater))
        return metrics.render(self.stats, self.reasons, self.sink_seconds, rows, self.write_wait_seconds)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "epoch": self.epoch, "core": CORE_BUILD.label, "stats": dict(self.stats),
                "batch_seconds": round(self.sink_seconds, 3), "write_wait_seconds": round(self.write_wait_seconds, 3),
                "first_batch_at": self.first_batch_at, "last_batch_at": self.last_batch_at,
                "last_offsets": {str(p): o for p, o in sorted(self.last_offsets.items())},
                "event_time_watermarks": {str(p): format_ts(w) for p, w in sorted(self.processor.watermarks.items())}}

    async def serve(self, stop: asyncio.Event) -> None:
        """Run inside an existing event loop until `stop` is set (tests, embedding). A crash of the
        app (e.g. an offset gap) ends it too, and is raised."""
        try:
            await self.app.start()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.app.wait_until_stopped())}
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
        finally:
            await self.app.stop()
            await self.on_db(self.processor.close)
        if self.app.crash_reason is not None:
            raise self.app.crash_reason

    def assigned_partitions(self) -> set[int]:
        """Input partitions this worker owns now (safe to call from any thread)."""
        return set(self.assigned)

    def run(self) -> None:
        """Run until SIGINT/SIGTERM; Faust's worker installs the handlers and stops cleanly."""
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
        worker.spinner = None  # our own lines say what started; a spinner mangles them
        try:
            worker.execute_from_commandline()
        finally:
            self._db.submit(self.processor.close).result()
            self._db.shutdown(wait=True)
