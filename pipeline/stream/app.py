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
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, TypeVar

import faust

from pipeline import CORE_BUILD
from pipeline.batch import topic_json
from pipeline.batch.processor import BatchProcessor, BatchResult, ClockBounds, EarlierWriteFailed, Message, message_headers
from pipeline.core import records
from pipeline.core.catalog import load_catalog
from pipeline.core.timestamps import format_ts
from pipeline.ingest import kafka_security
from pipeline.ingest.topics import ensure_all
from pipeline.runtime import control_key
from pipeline.serve import api, metrics
from pipeline.settings import Settings, redact
from pipeline.store import chcluster, migrations, sink
from pipeline.store.chclient import ClickHouseUnavailable, connect, preload_insert_support
from pipeline.store.storage import ClickHouseStorage
from pipeline.stream import backoff, delivery, gcpause, logidentity, record_batches
from pipeline.stream.batching import take_batches
from pipeline.stream.isolation import LOG_INCONSISTENT, Isolator, transient
from pipeline.stream.partitioning import PartitionMismatch, PlacementCheck, check_assignment, kafka_partitioner, partition_for
from pipeline.stream.rawbatches import RawBatch, RawBatches, raw_batches_enabled

log = logging.getLogger("billing.worker")
T = TypeVar("T")
ISOLATE_AFTER = 2  # failures of one batch before its messages are tried one by one
STUCK_AFTER = 3  # failures of one batch after which the worker reports itself unhealthy
IDLE_CHECK_S = 5.0  # how often an idle worker looks whether a full garbage collection can run now


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


FETCH_MAX_WAIT_MS = 100


def short_fetch_wait() -> None:
    """Faust builds its consumer with fetch_max_wait_ms=1500 (hard-coded). Apache Kafka answers a
    fetch as soon as one byte is there (fetch_min_bytes=1), so the wait only bounds an idle poll;
    Tansu, measured, held each fetch about 0.75 s under a steady 2,000 messages/s, so records sat
    in the broker for most of their publish-to-queryable time (p50 0.8 s, every batch one fetch).
    A 100 ms bound costs an idle worker ten empty fetches a second."""
    from faust.transport.drivers import aiokafka as driver

    if getattr(driver.AIOKafkaConsumerThread, "_billing_fetch_patched", False):
        return
    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer
    driver.AIOKafkaConsumerThread._billing_fetch_patched = True


async def _ack_events(stream: faust.StreamT, events: list[Any]) -> None:
    for event in events:
        await stream.ack(event)


class Worker:
    """One `billing worker`: the Faust app, its processor and its query API."""

    def __init__(
        self, settings: Settings, bootstrap: str, epoch: str, on_api: Callable[[str], None] | None = None, operator_token: str | None = None
    ) -> None:
        self.settings = settings
        gcpause.release_closed_transports()  # closed connections freed at once, not by a full collection
        self.operator_token = operator_token or settings.api_token or secrets.token_urlsafe(32)
        self.epoch = epoch
        self.catalog = load_catalog(settings.catalog)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.client = self._db.submit(self._open_clickhouse).result()
        ensure_all(settings, bootstrap)
        if epoch == logidentity.AUTO or settings.kafka:  # an explicit epoch on Kafka is bound to the topic's identity
            identity = logidentity.describe(bootstrap, settings.input_topic, **kafka_security.kafka_python_kwargs(settings))
            epoch = self.epoch = self._db.submit(logidentity.resolve, self.client, epoch, identity).result()
        self.control_key = control_key(settings.data_dir, settings.control_key, create=True)
        bounds = ClockBounds(settings.max_future_s * 1_000_000, settings.max_jump_s * 1_000_000)
        url = settings.clickhouse_url
        connect_again = functools.partial(connect, url, chcluster.client_options(settings, url))
        self.insert_lanes = sink.insert_lanes(connect_again, settings.insert_lanes)
        # BILLING_READS_BESIDE_WRITES: the processor's reads on a client of their own, so that they can
        # run beside a write (faster, but the engine then holds both at once: docs/operations.md)
        self.read_client = self._db.submit(connect_again).result() if settings.reads_beside_writes else None
        self.processor = BatchProcessor(
            self.client,
            self.catalog,
            epoch,
            auto_tick=settings.auto_tick,
            write_records=settings.write_records,
            control_key=self.control_key,
            clock_bounds=bounds,
            max_cached_accounts=settings.max_cached_accounts,
            storage=ClickHouseStorage(self.client, self.insert_lanes, reader=self.read_client, cluster=settings.clickhouse_cluster),
        )
        self.processor.placement = PlacementCheck(settings.partitions, settings.set_aside)
        self.on_api = on_api
        self.api_url: str | None = None
        self.stats: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.sink_seconds = 0.0
        self.write_wait_seconds = 0.0
        self.prom = metrics.WorkerMetrics(self._partition_rows)  # /metrics (its own registry: several workers per process)
        # wall clock (time.time()) of the first non-empty batch's arrival and of the latest batch's
        # write: with records already in the topic, their span is the worker's own throughput,
        # free of its startup and group join (the bench reads them from /healthz)
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.started_at = time.time()
        self.batch_started_at = 0.0  # wall clock of the latest batch's arrival (an idle worker has none in hand)
        self.last_offsets: dict[int, int] = {}
        self.assigned: set[int] = set()
        self._completing: asyncio.Future[None] | None = None  # the latest batch's completion task
        self._nothing_owed = asyncio.Event()  # cleared while a batch whose last write failed is processed again
        self._nothing_owed.set()
        self.stopping = False  # a signal came: a batch that keeps failing is left unacknowledged, not retried
        self.consecutive_failures = 0  # of the batch being retried now (0: the last batch went in)
        self.last_failure = ""
        self.isolator = Isolator(on_poisoned=self.prom.poisoned.inc)
        leave_group_at_generation_zero()
        short_fetch_wait()
        self.app = self._build_app(bootstrap)
        # the cache filled while Faust starts and joins the group (seconds): before the first batch,
        # which waits for it on the same thread. Every partition's accounts, until the assignment
        # says which are this worker's (`on_assigned`)
        if settings.warm_start:
            self._db.submit(self._warm)

    def _warm(self) -> None:
        started = time.perf_counter()
        try:
            warmed = self.processor.warm()
        except Exception as exc:  # only a head start: the first batches load what they need
            log.warning("could not warm the account cache (%r); the first batches load their accounts", exc)
            return
        if warmed:
            log.info("warmed the account cache with %d account states in %.1f s", warmed, time.perf_counter() - started)

    def _drop_unassigned(self) -> None:
        """After a partial assignment, the warmed states of other workers' accounts (by their key's partition)."""
        partitions, assigned = self.settings.partitions, self.assigned
        self.processor.forget([acc for acc in self.processor.states if partition_for(acc.encode(), partitions) not in assigned])

    def _open_clickhouse(self) -> Any:
        """A server that is not up yet is waited for (backoff, logged); the embedded engine fails
        fast, since its only failure is another process holding it."""
        url = self.settings.clickhouse_url
        for delay in backoff.delays():
            try:
                client = connect(url, chcluster.client_options(self.settings, url))
                migrations.prepare(client, self.settings)
                preload_insert_support()
                records.compile_validators()
                log.debug("ClickHouse ready at %s", redact(url))
                return client
            except ClickHouseUnavailable as exc:
                if url.startswith("chdb:"):
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the delays never end")

    def _close_store(self) -> None:
        """The processor's last write in, then its threads, the insert lanes' and the reads' clients ended."""
        self.processor.close()
        if self.insert_lanes is not None:
            self.insert_lanes.close()
        if self.read_client is not None:
            self.read_client.close()

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
            # TLS/SASL and consumer/producer timeouts: short ones for Tansu, which holds JoinGroup for
            # half the session timeout (DESIGN §7), production ones from deploy/ (kafka_security.py)
            **kafka_security.faust_settings(s),
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            topic_disable_leader=True,
            web_enabled=False,
            table_standby_replicas=0,
            producer_linger_ms=5,
            producer_partitioner=kafka_partitioner,
        )
        topic = app.topic(
            s.input_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=s.partitions
        )
        self.input_topic = topic
        if s.kafka_idempotent:
            kafka_security.make_idempotent(app)
        self.status_topic = app.topic(s.status_topic, key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        self.violations_topic = app.topic(s.violations_topic, key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        worker = self

        # records in raw batches from Faust's consumer, not one event each (pipeline/stream/rawbatches.py)
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
            if worker.assigned:  # not at the first join: the cache then holds only what `_warm` loaded
                await worker.on_db(worker.processor.forget)
            worker.assigned -= {tp.partition for tp in revoked if tp.topic == s.input_topic}
            worker.processor.reset_positions()

        @app.on_partitions_assigned.connect
        async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
            worker.assigned = {tp.partition for tp in assigned if tp.topic == s.input_topic}
            if worker.assigned != set(range(s.partitions)):
                await worker.on_db(worker._drop_unassigned)
            try:  # partitions added to the live topic reach running workers here, at the next rebalance
                check_assignment(s.input_topic, worker.assigned, s.partitions, app.consumer.topic_partitions(s.input_topic))
            except PartitionMismatch as exc:
                log.critical("%s", exc)
                asyncio.ensure_future(app.crash(exc))

        @app.task
        async def start_api() -> None:
            await worker.start_api()

        @app.timer(interval=IDLE_CHECK_S)
        async def collect_while_idle() -> None:
            await worker.collect_while_idle()

        return app

    async def handle(self, stream: faust.StreamT, events: list[Any]) -> None:
        """Process a batch and leave its completion (last write, outputs, acks) to a task, so that
        the next batch starts beside that write."""
        messages = [
            Message(
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value,
                message_headers(e.message.headers) if e.message.headers else (),
            )
            for e in events
        ]
        await self._handle(messages, [e.message.timestamp for e in events], functools.partial(_ack_events, stream, events))

    async def handle_raw(self, raw: RawBatches, batch: RawBatch) -> None:
        """`handle` for a raw batch (pipeline/stream/rawbatches.py): acknowledged into Faust's consumer at once."""

        async def acknowledge() -> None:
            raw.ack(batch)

        await self._handle(batch.messages, batch.stamps, acknowledge)

    async def _handle(self, messages: list[Message], stamps: list[float], acknowledge: Callable[[], Awaitable[None]]) -> None:
        """`stamps`: the messages' Kafka timestamps (Unix seconds), for publish-to-queryable latency."""
        if self.first_batch_at is None and messages:
            self.first_batch_at = time.time()
        # a batch whose last write failed is processed again before anything after it (the failure
        # may already be cleared in the processor, so the processor alone cannot tell this batch)
        await self._nothing_owed.wait()
        self.batch_started_at = time.time()
        started = time.perf_counter()
        result = await self.process(messages, leave_last_write=True)
        timing = [started, time.perf_counter(), time.perf_counter()]  # started, processed, last write in
        result.written.add_done_callback(lambda _: timing.__setitem__(2, time.perf_counter()))
        self._completing = asyncio.ensure_future(self._complete(acknowledge, messages, stamps, result, self._completing, timing))

    async def process(self, messages: list[Message], leave_last_write: bool = False) -> BatchResult:
        """Process a batch, retrying with backoff until it is applied (ClickHouse down, disk full:
        money is never skipped). An offset gap stops the worker."""
        delays = backoff.delays()
        while True:
            if self.stopping and self.consecutive_failures:
                raise asyncio.CancelledError("stopping: the failing batch stays unacknowledged and is read again at the next start")
            try:
                started = time.perf_counter()
                result = await self.on_db(self.processor.process, messages, leave_last_write)
            except LOG_INCONSISTENT as exc:
                log.critical("%s", exc)
                await self.app.crash(exc)  # loud: the process exits non-zero, offsets stay where they were
                raise
            except EarlierWriteFailed:
                if leave_last_write and self._completing is not None:
                    # the previous batch's completion processes that batch again: this one follows it
                    await asyncio.shield(self._completing)
                continue  # (or a completion processing its own batch again: the failure is cleared now)
            except Exception as exc:  # ClickHouse down, disk full...: retry, never skip money
                delay = next(delays)
                self._failed(len(messages), exc, delay)
                if self.consecutive_failures >= ISOLATE_AFTER and not transient(exc):
                    isolated = await self.on_db(self.isolator.run, self.processor, messages)
                    if isolated is not None:
                        self._succeeded()
                        return isolated
                await asyncio.sleep(delay)
                continue
            self.sink_seconds += time.perf_counter() - started
            self.write_wait_seconds += result.write_wait_s
            self._succeeded()
            return result

    def _failed(self, messages: int, exc: BaseException, delay: float) -> None:
        self.stats["batch_failures"] += 1
        self.consecutive_failures += 1
        self.last_failure = str(exc)[:300]
        self.prom.batch_failed()
        self.prom.set_consecutive_failures(self.consecutive_failures)
        log.warning("batch of %d messages not written (%s); retrying in %.1fs", messages, str(exc)[:300], delay)

    def _succeeded(self) -> None:
        self.consecutive_failures = 0
        self.last_failure = ""
        self.prom.set_consecutive_failures(0)

    def stuck(self) -> str | None:
        """Why this worker should not count as healthy: the same batch failing again and again."""
        if self.consecutive_failures < STUCK_AFTER:
            return None
        return f"the same batch failed {self.consecutive_failures} times in a row: {self.last_failure}"

    async def _complete(
        self,
        acknowledge: Callable[[], Awaitable[None]],
        messages: list[Message],
        stamps: list[float],
        result: BatchResult,
        previous: asyncio.Future[None] | None,
        timing: list[float] | None = None,
    ) -> None:
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
                    self._failed(len(messages), exc, backoff.FIRST_S)
                    await asyncio.sleep(backoff.FIRST_S)
                    result = await self.process(messages)
                    if timing is not None:
                        timing[1] = timing[2] = time.perf_counter()
                finally:
                    self._nothing_owed.set()
            self._account(messages, result)
            self._observe(len(messages), stamps, result, timing)
            await self.publish_outputs(result)
            await acknowledge()
        except Exception as exc:
            if self.stopping:  # Faust stops its producer while the last batches complete: not a crash
                log.warning(
                    "stopping: a batch's completion did not finish (%r); it stays unacknowledged and is read "
                    "again at the next start (its records skipped, its outputs published again)",
                    exc,
                )
                return
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

    def _observe(self, messages: int, stamps: list[float], result: BatchResult, timing: list[float] | None) -> None:
        """The batch's metrics, once it is in ClickHouse (queryable); the per-batch log line."""
        started, processed, written = timing if timing is not None else (0.0, 0.0, 0.0)
        tail = max(written - processed, 0.0)
        seconds = processed - started + tail
        self.prom.batch_done(
            result.statuses,
            result.reasons,
            result.skipped,
            seconds,
            result.write_wait_s + tail,
            result.write_wait_s,
            stamps,
            result.rejected_ids,
        )
        records = sum(result.statuses.values())
        if records or result.skipped:
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(result.statuses.items()) if v)
            lag = sum(max(hw - offset - 1, 0) for _, offset, _, hw in self._partition_rows() if hw is not None)
            log.info(
                "batch: %d records of %d messages, %d accounts (%s%s) in %.2fs (ClickHouse %.2fs); lag %d",
                records,
                messages,
                len(result.states),
                outcomes or "nothing new",
                f", {result.skipped} redelivered skipped" if result.skipped else "",
                seconds,
                result.write_wait_s + tail,
                lag,
            )
        if result.unkeyed:
            self.prom.unkeyed.inc(result.unkeyed)
            log.warning(
                "%d record(s) came in messages without a key and were rejected (invalid_schema): the input topic has %d "
                "partitions, and a producer must key every record by its account_id to keep an account's records in "
                "order (docs/gateway.md). `billing rejected` lists them as received, to publish again with the key",
                result.unkeyed,
                self.settings.partitions,
            )

    async def collect_while_idle(self) -> None:
        """Python's full collection early, on the folding thread, once no batch has come for a while
        (stream/gcpause.collect_while_idle): its pause then falls between bursts."""
        if self._completing is not None and not self._completing.done():
            return  # a batch's write is still in flight
        idle_s = time.time() - max(self.last_batch_at or self.started_at, self.batch_started_at)
        if idle_s >= gcpause.IDLE_S:
            await self.on_db(gcpause.collect_while_idle, idle_s)

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
        write: the batch is not done (its offsets are not committed) until the broker has
        acknowledged every one of them (pipeline/stream/delivery.py)."""
        if not result.outbound:
            return
        topics = {topic_json.STATUS: self.status_topic, topic_json.VIOLATIONS: self.violations_topic, topic_json.INPUT: self.input_topic}
        names = {destination: topic.get_topic_name() for destination, topic in topics.items()}
        # Faust's producer is aiokafka's underneath; its record batches are filled here directly
        # (record_batches.py: a send per message held the event loop, and Python's lock, for a
        # tenth of the worker's time on gateway traffic)
        producer = self.app.producer._ensure_producer()
        counts = {name: len(await producer.partitions_for(name)) for name in {names[m.destination] for m in result.outbound}}
        chunks = record_batches.chunks(
            ((names[m.destination], m.account_id.encode(), m.value) for m in result.outbound), counts.__getitem__, producer.create_batch
        )

        async def send(chunk: record_batches.Chunk) -> Any:
            # the returned future resolves once the broker acknowledged the whole batch
            return await producer.send_batch(chunk.builder(producer.create_batch), chunk.topic, partition=chunk.partition)

        self.stats["output_send_failures"] += await delivery.deliver(chunks, send, describe=repr)

    async def start_api(self) -> None:
        s = self.settings
        access = api.Access(operator_token=self.operator_token, token=s.api_token, loopback_only=api.is_loopback(s.api_host))
        web_app = api.build_app(
            lambda: self.client, self.catalog.free_quota_tokens, self.health, self.read_db, self.metrics, access=access, ready=self.stuck
        )
        _, self.api_url = await api.serve(web_app, self.settings.api_host, self.settings.api_port)
        log.debug("query API at %s", self.api_url)
        if self.on_api:
            self.on_api(self.api_url)

    def metrics(self) -> str:
        return self.prom.render().decode()

    def _partition_rows(self) -> list[tuple[int, int, int | None, int | None]]:
        """(partition, processed offset, committed offset, high watermark) when /metrics is scraped."""
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
        return rows

    def health(self) -> dict[str, Any]:
        stuck = self.stuck()
        return {
            "status": "ok" if stuck is None else "stuck",
            "problem": stuck,
            "epoch": self.epoch,
            "core": CORE_BUILD.label,
            "stats": dict(self.stats),
            "batch_seconds": round(self.sink_seconds, 3),
            "write_wait_seconds": round(self.write_wait_seconds, 3),
            "first_batch_at": self.first_batch_at,
            "last_batch_at": self.last_batch_at,
            "last_offsets": {str(p): o for p, o in sorted(self.last_offsets.items())},
            "event_time_watermarks": {str(p): format_ts(w) for p, w in sorted(self.processor.watermarks.items())},
        }

    def begin_stop(self) -> None:
        """A stop was asked for. Faust would wait, on the way out, for every event in flight to be
        acknowledged, and a batch that keeps failing never is: the worker then ignored SIGTERM. Nothing
        unacknowledged is committed, so it is safe not to wait: that batch is read again next time.
        (Rebalances still wait for the batch in flight: another worker must not bill it beside this one.)"""
        self.stopping = True
        self.app.conf.stream_wait_empty = False

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
            self.begin_stop()
            await self.app.stop()
            await self.on_db(self._close_store)
        if self.app.crash_reason is not None:
            raise self.app.crash_reason

    def assigned_partitions(self) -> set[int]:
        """Input partitions this worker owns now (safe to call from any thread)."""
        return set(self.assigned)

    def run(self) -> None:
        """Run until SIGINT/SIGTERM; Faust's worker installs the handlers and stops cleanly."""
        # override_logging=False: the CLI's logging set-up (pipeline/logs.py) stands, not mode's
        worker = _SignalledWorker(self.app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
        worker.on_signal = self.begin_stop
        worker.spinner = None  # our own lines say what started; a spinner mangles them
        try:
            worker.execute_from_commandline()
        finally:
            self._db.submit(self._close_store).result()
            self._db.shutdown(wait=True)


class _SignalledWorker(faust.Worker):
    """Faust's worker, telling the billing worker first that a signal asked it to stop."""

    on_signal: Callable[[], None] = staticmethod(lambda: None)

    def _schedule_shutdown(self, signal: Any) -> None:
        self.on_signal()
        super()._schedule_shutdown(signal)
