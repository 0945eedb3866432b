"""The batch processor alone on gateway-shaped traffic: `python -m bench.gateway_processor`.

As `processor_bench` isolates the worker's own work from Kafka and Faust for the `billing publish`
shape, this does it for a gateway shape (bench/gateway.py): every account's key and credit first
(framed per account, not timed), then the shape's single-record messages through
`BatchProcessor.process` in raw batches of `BILLING_WRITE_RECORDS` records, as the worker takes
them (each batch's last write left in flight; `--reads-beside-writes` as BILLING_READS_BESIDE_WRITES). It also times the processor's ClickHouse reads in place (`reads_s`), so that a change to
the per-account cost shows where it went, times the sink thread's inserts per table with their
body sizes (`writes`: the engine parses them on the second core, beside the folding thread),
reports the folding thread's seconds by phase (`phases_s`, processor.PHASES, and the wait for
writes), and the process's RSS after each batch. `--timeline` also records when each read, encode
and write ran and how long the GIL was held in one go (bench/timeline.py): what ran beside what.

    python -m bench.gateway_processor --accounts 100000 --records 200000 [--profile FILE] [--timeline]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from bench import gateway
from bench.timeline import GilProbe, TimedStorage, Timeline
from pipeline.batch.processor import PHASES, BatchProcessor, Message
from pipeline.core.catalog import load_catalog
from pipeline.settings import load_settings
from pipeline.store import sink, statestore
from pipeline.store.chclient import connect, migrate
from pipeline.store.storage import ClickHouseStorage

TIMED_READS = ("load_states", "load_seen", "load_lines", "load_windows", "committed_statuses", "committed_violations", "processed_offsets")


def rss_mib() -> float:
    """The process's resident set now (VmRSS), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _timed(seconds: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - started

    return wrapper


def engine_memory(client: Any) -> dict[str, Any]:
    """The embedded engine's own account of its memory (it lives in this process's RSS): what its
    memory tracker counts, and its parts (each active part keeps its primary index in memory).
    chdb has no system.asynchronous_metrics (cache sizes)."""
    found: dict[str, Any] = {}
    try:
        found["memory_tracking_mib"] = round(
            client.query("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'").result_rows[0][0] / 2**20
        )
        parts, pk = client.query(
            "SELECT count(), sum(primary_key_bytes_in_memory_allocated) FROM system.parts WHERE active AND database = currentDatabase()"
        ).result_rows[0]
        found["active_parts"], found["primary_keys_mib"] = parts, round(pk / 2**20)
    except Exception as exc:  # a bench figure, not a failure
        found["error"] = repr(exc)[:200]
    return found


def python_heap(processor: BatchProcessor) -> dict[str, Any]:
    """What the processor holds, and (under --tracemalloc) Python's share of the RSS and its
    largest holders, printed to stderr: memory that is not Python's is the engine's or malloc's."""
    held: dict[str, Any] = {
        "states_in_memory": len(processor.states),
        "sleeping": len(processor._sleeping),
        "hours_tracked": len(processor._hours),
        "ticked": len(processor._ticked),
    }
    held["engine"] = engine_memory(processor.client)
    import tracemalloc

    if tracemalloc.is_tracing():
        traced, peak = tracemalloc.get_traced_memory()
        held["python_heap_mib"] = {"traced": round(traced / 2**20), "peak": round(peak / 2**20), "rss": round(rss_mib())}
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:15]:
            print(f"{stat.size / 2**20:8.1f} MiB {stat.count:9,} blocks  {stat.traceback}", file=sys.stderr)
    return held


def run(
    shape: gateway.Shape,
    workdir: Path,
    batch_records: int | None = None,
    insert_lanes: int | None = None,
    reads_beside_writes: bool | None = None,
    timeline: Timeline | None = None,
) -> dict[str, Any]:
    settings = load_settings()
    size = batch_records or settings.write_records
    url = f"chdb://{workdir / 'gateway-processor-clickhouse'}"
    client = connect(url)
    migrate(client)
    write_s: Counter[str] = Counter()
    write_bytes: Counter[str] = Counter()

    def timed(lane_client: Any) -> Any:
        """A client whose inserts count into `write_s` and `write_bytes` (on every lane, so the
        total can exceed the wall time when the lanes run side by side)."""
        plain_insert = lane_client.raw_insert

        def timed_insert(table: str, columns: Any, body: bytes, **kwargs: Any) -> Any:
            write_bytes[table] += len(body)
            return _timed(write_s, table, plain_insert)(table, columns, body, **kwargs)

        lane_client.raw_insert = timed_insert
        return lane_client

    # as the worker (stream/app.py): a unit's inserts of one step side by side; 1: one after another
    insert_lanes = insert_lanes or settings.insert_lanes
    reads_beside_writes = settings.reads_beside_writes if reads_beside_writes is None else reads_beside_writes
    lanes = sink.insert_lanes(lambda: timed(connect(url)), insert_lanes)
    # with a timeline, every read, encode and write is recorded (bench/timeline.py)
    storage_kind: Any = ClickHouseStorage if timeline is None else functools.partial(TimedStorage, timeline)
    processor = BatchProcessor(
        client,
        load_catalog(),
        "bench-gateway",
        auto_tick=False,
        write_records=settings.write_records,
        max_cached_accounts=settings.max_cached_accounts,
        # as the worker: with BILLING_READS_BESIDE_WRITES, the reads on a client of their own
        storage=storage_kind(client, lanes, reader=connect(url) if reads_beside_writes else None),
    )
    setup = [Message(0, i, key, value) for i, (key, value) in enumerate(gateway.setup_messages(shape))]
    traffic = [Message(0, len(setup) + i, key, value) for i, (key, value) in enumerate(gateway.traffic(shape))]
    started = time.perf_counter()
    for i in range(0, len(setup), settings.batch_size):
        processor.process(setup[i : i + settings.batch_size])
    setup_s = time.perf_counter() - started
    processor.forget()  # a worker meets the traffic with whatever its LRU holds; start cold, the harder case
    print(f"setup done in {setup_s:.1f} s; timed part starts", file=sys.stderr, flush=True)
    reads: Counter[str] = Counter()
    originals = {name: getattr(statestore, name) for name in TIMED_READS}
    for name, fn in originals.items():
        setattr(statestore, name, _timed(reads, name, fn))
    timed(client)
    statuses: Counter[str] = Counter()
    outbound: Counter[str] = Counter()  # messages the worker would publish after each batch, by topic
    per_batch: list[dict[str, Any]] = []
    phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)  # the folding thread's seconds by phase
    probe = GilProbe(timeline).start() if timeline is not None else None
    batch_spans: list[tuple[float, float]] = []
    try:
        started = time.perf_counter()
        for i in range(0, len(traffic), size):
            batch_started = time.perf_counter()
            result = processor.process(traffic[i : i + size], leave_last_write=True)  # as the worker
            statuses.update(result.statuses)
            for phase, phase_seconds in result.phase_s.items():
                phases[phase] += phase_seconds
            outbound.update(message.destination for message in result.outbound)
            batch_spans.append((batch_started, time.perf_counter()))
            per_batch.append(
                {
                    "records": len(traffic[i : i + size]),
                    "seconds": round(time.perf_counter() - batch_started, 3),
                    "write_wait_s": round(result.write_wait_s, 3),
                    "rss_mib": round(rss_mib()),
                }
            )
        result.written.result()  # the last write in (a failed one raises here)
        seconds = max(time.perf_counter() - started, 1e-9)
        heap = python_heap(processor)
        if timeline is not None:
            heap["timeline"] = timeline.summary(started, started + seconds)
            print(
                "\n".join(["batch   start  length  (each span in seconds from the batch's start)"] + timeline.rows(started, batch_spans)),
                file=sys.stderr,
            )
    finally:
        if probe is not None:
            probe.stop()
        for name, fn in originals.items():
            setattr(statestore, name, fn)
        processor.close()
        if lanes is not None:
            lanes.close()
    if sum(statuses.values()) != len(traffic):
        raise RuntimeError(f"the processor accounted for {sum(statuses.values())} of {len(traffic)} records")
    return {
        "shape": shape.name,
        "accounts": shape.accounts,
        "records": len(traffic),
        "batch_records": size,
        "insert_lanes": insert_lanes,
        "reads_beside_writes": reads_beside_writes,
        "setup_s": round(setup_s, 2),
        "seconds": round(seconds, 2),
        "rps": round(len(traffic) / seconds),
        "reads_s": {k: round(v, 2) for k, v in reads.items()},
        "phases_s": {phase: round(phases[phase], 2) for phase in PHASES}
        | {"write_wait": round(sum(b["write_wait_s"] for b in per_batch), 2)},
        "writes": {
            table: {"s": round(write_s[table], 2), "mib": round(write_bytes[table] / 2**20, 1)} for table, _ in write_s.most_common()
        },
        "write_s_total": round(sum(write_s.values()), 2),
        "outcomes": dict(statuses),
        "outbound": dict(outbound),
        **heap,
        "rss_mib_max": max(b["rss_mib"] for b in per_batch),
        "batches": per_batch,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch-records", type=int, default=None, help="records per batch (default BILLING_WRITE_RECORDS)")
    parser.add_argument(
        "--bound-values",
        type=int,
        default=None,
        help="values bound per query for this run "
        "(statestore.MAX_BOUND_VALUES and MAX_BOUND_PER_QUERY: the chunk size of the working-set loads)",
    )
    parser.add_argument(
        "--insert-lanes",
        type=int,
        default=None,
        help="a unit's inserts of one step side by side on this many clients (default BILLING_INSERT_LANES, as the worker; 1: one after another)",
    )
    parser.add_argument(
        "--reads-beside-writes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a unit's reads on a client of their own, beside the write in flight (default BILLING_READS_BESIDE_WRITES, as the worker)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile the timed part into this file (pstats)")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="record when each read, encode and write ran and the GIL's long holds (bench/timeline.py): "
        "a line per batch on stderr, a summary in the JSON",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python's allocations; print the largest holders "
        "and Python's share of the RSS at the end (slow: compare RSS only between runs with the same flag)",
    )
    args = parser.parse_args(argv)
    if args.bound_values:
        statestore.MAX_BOUND_VALUES = statestore.MAX_BOUND_PER_QUERY = args.bound_values
    shape = gateway.Shape(f"gwp{args.accounts}", accounts=args.accounts, records=args.records)
    timeline = Timeline() if args.timeline else None
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="gwproc-", ignore_cleanup_errors=True) as tmp:  # the engine may still be merging
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            result = run(shape, Path(tmp), args.batch_records, args.insert_lanes, args.reads_beside_writes, timeline)
            profiler.disable()
            profiler.dump_stats(str(args.profile))
        else:
            result = run(shape, Path(tmp), args.batch_records, args.insert_lanes, args.reads_beside_writes, timeline)
    print(json.dumps(result), flush=True)
    print(
        f"{shape.name}: {result['rps']:,}/s over {result['records']:,} records, reads {result['reads_s']}, folding thread {result['phases_s']}",
        file=sys.stderr,
    )
    if timeline is not None:
        print(f"timeline: {result['timeline']}", file=sys.stderr)


if __name__ == "__main__":
    main()
