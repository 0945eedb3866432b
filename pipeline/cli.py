"""The `billing` command (CONTRACT.md): up, worker, publish, wait, bills, rejected, account, migrate.

Exit codes: 0 success, 2 bad usage or bad input (one-line reason on stderr), 1 other failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline import CORE_BUILD, output
from pipeline.catalog import DEFAULT_CATALOG, CatalogError, load_catalog
from pipeline.reader import QueryError, WorkerBusy, open_reader
from pipeline.runtime import read_runtime
from pipeline.settings import Settings, load_settings
from pipeline.timestamps import TimestampError

BILL_COLUMNS = ("account_id", "hour", "api_key_id", "item", "requests", "input_tokens", "output_tokens", "free_tokens",
                "billed_input_tokens", "billed_output_tokens", "quantity", "amount")
REBILL_ACCOUNTS_PER_CALL = 50  # accounts replayed per call to the worker: progress between calls
REJECTED_COLUMNS = ("event_id", "account_id", "reason", "detail", "timestamp", "record")


class UsageError(Exception):
    """Bad usage or bad input: exit 2."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_epoch() -> str:
    """Names one life of the embedded broker's log; sorts in time order."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def kafka_of(settings: Settings) -> str:
    if settings.kafka:
        return settings.kafka
    running = read_runtime(settings.data_dir)
    if running is None:
        raise UsageError(
            f"no Kafka to talk to: start `billing up` (data dir {settings.data_dir}) in another terminal, "
            "or set BILLING_KAFKA / --kafka"
        )
    return running.kafka


# -- commands -------------------------------------------------------------------------------

def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.app import Worker
    from pipeline.broker import EmbeddedBroker
    from pipeline.topics import ensure_all
    from pipeline.runtime import Runtime, clear_runtime, write_runtime

    running = read_runtime(settings.data_dir)
    if running is not None:
        raise UsageError(f"`billing up` already runs on data dir {settings.data_dir} (pid {running.pid}); stop it first")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    epoch = new_epoch()
    settings = settings.with_(log_epoch=epoch)
    broker = EmbeddedBroker(settings.data_dir / "broker.log")
    bootstrap = broker.start()
    say(f"billing: broker   Tansu (embedded, memory storage) at {bootstrap}; log {settings.data_dir / 'broker.log'}")
    try:
        names = ensure_all(settings, bootstrap)
        say(f"billing: topics   {', '.join(names)} ({settings.partitions} partitions each)")
        started = time.monotonic()

        def on_api(url: str) -> None:
            write_runtime(settings.data_dir, Runtime(os.getpid(), bootstrap, url, epoch, datetime.now(timezone.utc).isoformat()))
            say(f"billing: query    API at {url} (used by `billing bills|rejected|account|wait` in other terminals)")
            say(f"billing: ready in {time.monotonic() - started:.1f}s; publish with `billing publish FILE`; Ctrl-C stops")
            if args.demo:
                threading.Thread(target=run_demo, args=(settings, bootstrap, url, args.demo_records), daemon=True).start()

        worker = Worker(settings, bootstrap, epoch, on_api=on_api)
        say(f"billing: store    ClickHouse {worker_store_label(settings)}")
        say(f"billing: core     {CORE_BUILD.label}")
        worker.run()
    finally:
        clear_runtime(settings.data_dir, os.getpid())
        broker.stop()
        say("billing: stopped (broker, worker); bills stay in ClickHouse under " + str(settings.data_dir))
    return 0


def worker_store_label(settings: Settings) -> str:
    url = settings.clickhouse_url
    return f"embedded (chdb) at {url[len('chdb://'):]}" if url.startswith("chdb:") else "server " + url.split("@")[-1]


def run_demo(settings: Settings, bootstrap: str, api_url: str, records: int) -> None:
    from pipeline.publish import publish_lines
    from pipeline.reader import ApiReader
    from pipeline.workload import generate

    say(f"billing: demo     generating {records} records (several accounts, all models, price dates, plugins, bad records)")
    lines = [line.encode() for line in generate(records, seed=int(time.time()) % 1000)]
    report = publish_lines(lines, bootstrap, settings.input_topic, total=len(lines))
    say(f"billing: demo     published {report.total} records: " + ", ".join(f"{k} {v}" for k, v in sorted(report.sent.items())))
    reader = ApiReader(api_url)
    if not wait_for(reader, bootstrap, settings, timeout=300):
        say("billing: demo     the worker did not catch up within 300 s")
        return
    bills = reader.bills(None, None, None)
    rejected = reader.rejected(None, None)
    total = sum((Decimal(b["amount"]) for b in bills), Decimal(0))
    say(f"billing: demo     {len(bills)} bill lines, total {total:.6f} CNY; {len(rejected)} rejected records")
    output.emit(bills[-12:], "table", BILL_COLUMNS, out=sys.stderr)
    say("billing: demo     try `billing bills --format json`, `billing rejected`, `billing account <id>` in another terminal")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.app import Worker
    from pipeline.runtime import Runtime, clear_runtime, write_runtime

    bootstrap = kafka_of(settings)
    embedded = settings.clickhouse_url.startswith("chdb:")

    def on_api(url: str) -> None:
        if embedded:  # the other commands reach this engine through the worker
            write_runtime(settings.data_dir, Runtime(os.getpid(), bootstrap, url, settings.log_epoch, datetime.now(timezone.utc).isoformat()))
        say(f"billing: worker consuming {settings.input_topic} at {bootstrap}; API at {url}")
        say(f"billing: core {CORE_BUILD.label}")

    try:
        Worker(settings, bootstrap, settings.log_epoch, on_api=on_api).run()
    finally:
        if embedded:
            clear_runtime(settings.data_dir, os.getpid())
    return 0


def cmd_publish(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.publish import live_lines, publish_lines
    from pipeline.topics import ensure_all

    bootstrap = kafka_of(settings)
    if args.file == "-":
        lines: Any = live_lines(sys.stdin.buffer)
        total = None
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        data = path.read_bytes().splitlines()
        lines, total = data, len(data)
    from pipeline.kafka_security import kafka_python_kwargs

    ensure_all(settings, bootstrap)
    report = publish_lines(lines, bootstrap, settings.input_topic, total=total, client_kwargs=kafka_python_kwargs(settings))
    print(f"published {report.total} records" + "".join(f"\n  {kind}: {n}" for kind, n in sorted(report.sent.items())))
    if report.failures:
        say(f"billing: Kafka did not acknowledge a send ({report.failures[0][:200]}); stopped there so that no account's "
            f"records go out of order. Publish again from line {report.resume_line} (e.g. `tail -n +{report.resume_line} FILE "
            "| billing publish -`): lines after it that did land are skipped as duplicates")
        return 1
    if report.bad_lines:
        for number, error in report.bad_lines[:20]:
            say(f"billing: line {number}: not JSON ({error}); not sent")
        more = len(report.bad_lines) - 20
        if more > 0:
            say(f"billing: ... and {more} more lines that are not JSON")
        say(f"billing: {len(report.bad_lines)} lines were not sent (lines " + ", ".join(str(n) for n, _ in report.bad_lines[:50]) + ")")
        return 2
    return 0


def wait_for(reader: Any, bootstrap: str, settings: Settings, timeout: float) -> bool:
    """Publish a barrier to every partition; done when the workers have written all of them."""
    from kafka import KafkaProducer

    from pipeline.processor import barrier_message

    from pipeline.kafka_security import kafka_python_kwargs

    barrier = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="billing-wait", acks="all", **kafka_python_kwargs(settings))
    try:
        partitions = sorted(producer.partitions_for(settings.input_topic) or [])
        if not partitions:
            raise UsageError(f"topic {settings.input_topic} does not exist yet: nothing was published")
        for p in partitions:
            producer.send(settings.input_topic, value=barrier_message(barrier), partition=p)
        producer.flush()
    finally:
        producer.close()
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            done = reader.barrier_partitions(barrier)
        except WorkerBusy as exc:
            if time.monotonic() > deadline:
                raise
            if not told:
                say(f"billing: {exc}; still waiting (up to {timeout:g}s in all)")
                told = True
            continue
        if done >= len(partitions):
            return True
        if time.monotonic() > deadline:
            say(f"billing: timed out after {timeout:g}s: {done} of {len(partitions)} partitions caught up; is a worker running?")
            return False
        time.sleep(0.1)


def cmd_wait(settings: Settings, args: argparse.Namespace) -> int:
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    return 0 if wait_for(reader, kafka_of(settings), settings, args.timeout) else 1


def cmd_bills(settings: Settings, args: argparse.Namespace) -> int:
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    output.emit(reader.bills(args.account, args.start, args.end), args.format, BILL_COLUMNS)
    return 0


def cmd_rejected(settings: Settings, args: argparse.Namespace) -> int:
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    rows = reader.rejected(args.account, args.reason)
    output.emit(rows, args.format, REJECTED_COLUMNS if args.format != "json" else None)
    return 0


def cmd_account(settings: Settings, args: argparse.Namespace) -> int:
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    row = reader.account(args.account_id)
    if row is None:
        raise UsageError(f"no account {args.account_id!r} has any record yet")
    if args.format == "table":
        for key, value in row.items():
            print(f"{key:18} {output._cell(value)}")
    else:
        output.emit([row], args.format)
    return 0


def cmd_settle(settings: Settings, args: argparse.Namespace) -> int:
    """Close the hours of every known account up to T: a clock tick into each account's log."""
    from pipeline.outputs_json import tick
    from pipeline.publish import publish_lines
    from pipeline.timestamps import parse_ts

    until = parse_ts(args.until)
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    accounts = [a for a in reader.account_ids() if a]
    report = publish_lines((tick(a, until) for a in accounts), kafka_of(settings), settings.input_topic, total=len(accounts))
    print(f"published a clock tick at {args.until} for {report.total} accounts; `billing wait` then shows their settlements")
    return 0 if not report.failures else 1


def cmd_settlements(settings: Settings, args: argparse.Namespace) -> int:
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    output.emit(reader.settlements(args.account), args.format)
    return 0


def cmd_rebill(settings: Settings, args: argparse.Namespace) -> int:
    """Re-price [from, to) with a catalog; print per account-hour old, new, delta; apply unless --dry-run."""
    import json as _json

    from pipeline.progress import Progress
    from pipeline.publish import publish_lines
    from pipeline.outputs import STALE_REBILL
    from pipeline.rebill import audit_record, new_run_id, refused_accounts, without_accounts
    from pipeline.timestamps import parse_ts

    if parse_ts(args.end) <= parse_ts(args.start):
        raise UsageError("--to must be after --from")
    catalog_path = Path(args.catalog) if args.catalog else (settings.catalog or DEFAULT_CATALOG)
    catalog = load_catalog(catalog_path)  # refuse a bad catalog before any work
    data = _json.loads(catalog_path.read_text(encoding="utf-8"))
    reader = open_reader(settings, catalog.free_quota_tokens)
    accounts = reader.rebill_accounts(args.start, args.end, args.account)
    say(f"billing: rebill   replaying the whole log of {len(accounts)} accounts with records in "
        f"[{args.start}, {args.end}) under catalog {catalog.version}")
    started = time.monotonic()
    run_id, chunks = new_run_id(), []
    progress = Progress("billing: rebill   records replayed")
    for i in range(0, len(accounts), REBILL_ACCOUNTS_PER_CALL):
        chunks.append(reader.rebill_plan(data, args.start, args.end, accounts[i:i + REBILL_ACCOUNTS_PER_CALL], run_id))
        progress.update(sum(c["records_read"] for c in chunks))
    progress.done()
    audit = audit_record(run_id, args.start, args.end, args.account, catalog.version, chunks)
    records = [r for c in chunks for r in c["records"]]
    elapsed = time.monotonic() - started
    say(f"billing: rebill   {audit['records_read']} records replayed in {elapsed:.1f}s "
        f"({audit['records_read'] / max(elapsed, 1e-9):,.0f}/s); {audit['lines_changed']} lines change, "
        f"{len(audit['now_billed'])} rejected calls now billed")
    output.emit(audit["diffs"], args.format, ("account_id", "hour", "old_amount", "new_amount", "delta"))
    if args.dry_run:
        say("billing: rebill   dry run: nothing written")
        return 0
    bootstrap = kafka_of(settings)
    if records:
        report = publish_lines((r.encode() for r in records), bootstrap, settings.input_topic, total=len(records), quiet=True)
        if report.failures:
            raise RuntimeError(f"could not publish the revised lines: {report.failures[0]}; run the same rebill again")
        if not wait_for(reader, bootstrap, settings, timeout=args.timeout):
            return 1
    stale = refused_accounts(reader.rejected(None, STALE_REBILL), run_id)
    reader.write_rebill_audit(without_accounts(audit, stale, records))
    if stale:
        say(f"billing: rebill   {len(stale)} accounts got a late call for a rebilled line while this rebill ran, so their "
            f"lines were NOT revised (listed by `billing rejected --reason {STALE_REBILL}`): {', '.join(sorted(stale)[:20])}"
            f"{' ...' if len(stale) > 20 else ''}. Run the same rebill again; the other accounts are done.")
        return 1
    say(f"billing: rebill   run {audit['run_id']} applied; audit in rebill_runs / rebill_diffs")
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline import chcluster, migrations
    from pipeline.chclient import CLUSTER_DDL_DIR, DDL_DIR, connect

    url = settings.clickhouse_url
    client = connect(url, chcluster.client_options(settings, url))
    ddl_dir = CLUSTER_DDL_DIR if settings.clickhouse_cluster else DDL_DIR
    done = migrations.apply(client, ddl_dir, cluster=settings.clickhouse_cluster)
    version = migrations.verify(client, ddl_dir)
    print(f"schema at version {version:03d}; applied {len(done)} migrations" + "".join(f"\n  {m.label}" for m in done))
    return 0


def cmd_drained(settings: Settings, args: argparse.Namespace) -> int:
    """Growing partitions (docs/cluster-operations.md): 0 once the workers have written everything
    published to the topic so far (a barrier per partition), so that they may switch to the new one."""
    from pipeline.partitioning import confirm_drained

    topic = args.topic or settings.input_topic
    reader = open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)
    ok = confirm_drained(reader, kafka_of(settings), settings, topic, args.timeout, wait_for)
    print(f"{topic}: {'drained: every record published to it so far is billed' if ok else 'NOT drained'}")
    return 0 if ok else 1


# -- parsing ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kafka", help="Kafka bootstrap servers (env BILLING_KAFKA; default: the embedded broker of `billing up`)")
    common.add_argument("--clickhouse", help="ClickHouse URL (env BILLING_CLICKHOUSE; default chdb://<data-dir>/clickhouse)")
    common.add_argument("--data-dir", help="data directory (env BILLING_DATA_DIR; default ./.billing)")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")
    query = argparse.ArgumentParser(add_help=False, parents=[common])  # commands that print rows
    query.add_argument("--format", choices=output.FORMATS, default="table")
    parser = argparse.ArgumentParser(prog="billing", description="Usage metering and hourly billing pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="run the embedded stack (broker, worker, ClickHouse) in the foreground")
    up.add_argument("--demo", action="store_true", help="also publish a realistic synthetic workload")
    up.add_argument("--demo-records", type=int, default=20000, help="records in the demo workload (default 20000)")
    up.set_defaults(run=cmd_up)
    sub.add_parser("worker", parents=[common], help="the pipeline worker alone (production: N replicas)").set_defaults(run=cmd_worker)
    pub = sub.add_parser("publish", parents=[common], help="publish JSON-lines input records (FILE or - for stdin)")
    pub.add_argument("file")
    pub.set_defaults(run=cmd_publish)
    wait = sub.add_parser("wait", parents=[common], help="return once everything published so far is queryable")
    wait.add_argument("--timeout", type=float, default=300.0)
    wait.set_defaults(run=cmd_wait)
    bills = sub.add_parser("bills", parents=[query], help="hourly bill lines")
    bills.add_argument("--account")
    bills.add_argument("--from", dest="start", help="RFC 3339; lines whose hour is at or after it")
    bills.add_argument("--to", dest="end", help="RFC 3339; lines whose hour is before it")
    bills.set_defaults(run=cmd_bills)
    rej = sub.add_parser("rejected", parents=[query], help="records that could not be billed, with the reason")
    rej.add_argument("--account")
    rej.add_argument("--reason")
    rej.set_defaults(run=cmd_rejected)
    acc = sub.add_parser("account", parents=[query], help="an account's status, balance, vouchers, free tokens left")
    acc.add_argument("account_id")
    acc.set_defaults(run=cmd_account)
    settle = sub.add_parser("settle", parents=[common], help="close every account's hours up to a time (historical loads)")
    settle.add_argument("--until", required=True, help="RFC 3339; hours ending (plus the grace) by then are settled")
    settle.set_defaults(run=cmd_settle)
    stl = sub.add_parser("settlements", parents=[query], help="hourly settlements against vouchers and cash")
    stl.add_argument("--account")
    stl.set_defaults(run=cmd_settlements)
    rebill = sub.add_parser("rebill", parents=[query], help="re-price a time range with a catalog and write revised bills")
    rebill.add_argument("--from", dest="start", required=True, help="RFC 3339, inclusive (bill hours at or after it)")
    rebill.add_argument("--to", dest="end", required=True, help="RFC 3339, exclusive")
    rebill.add_argument("--catalog", help="price catalog file (default: the worker's, schemas/catalog.json)")
    rebill.add_argument("--account", help="only this account")
    rebill.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    rebill.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker to apply it")
    rebill.set_defaults(run=cmd_rebill)
    sub.add_parser("migrate", parents=[common], help="apply the pending ClickHouse schema migrations").set_defaults(run=cmd_migrate)
    drained = sub.add_parser("drained", parents=[common], help="exit 0 once a topic's records are all billed (growing partitions)")
    drained.add_argument("--topic", help="the old input topic (default: the configured one)")
    drained.add_argument("--timeout", type=float, default=300.0)
    drained.set_defaults(run=cmd_drained)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(args.kafka, args.clickhouse, args.data_dir)
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    try:
        return run(settings, args)
    except (UsageError, ValueError, TimestampError, CatalogError) as exc:
        say(f"billing: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `billing bills | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except QueryError as exc:
        say(f"billing: {exc}")
        return 1
    except Exception as exc:  # the last line of defence: one clear line, not a traceback
        from pipeline.settings import redact

        message = str(exc)
        if settings.clickhouse:
            message = message.replace(settings.clickhouse, redact(settings.clickhouse))
        say(f"billing: failed: {type(exc).__name__}: {message.splitlines()[0] if message else ''} (run with -v for details)")
        if args.verbose:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
