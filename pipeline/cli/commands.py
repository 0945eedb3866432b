"""The `billing` command (CONTRACT.md): up, worker, publish, wait, bills, rejected, account, migrate.

Exit codes: 0 success, 2 bad usage or bad input (one-line reason on stderr), 1 other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline import CORE_BUILD, logs
from pipeline.cli import tables
from pipeline.cli.progress import ConsumerProgress
from pipeline.core.catalog import DEFAULT_CATALOG, CatalogError, load_catalog
from pipeline.core.reasons import REASONS
from pipeline.core.timestamps import TimestampError
from pipeline.runtime import read_runtime
from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.store import queries
from pipeline.store.reader import QueryError, Reader, WorkerBusy, open_reader

BILL_COLUMNS = queries.BILL_FIELDS  # the columns of `billing bills`, in the order queries.bills returns them
REBILL_ACCOUNTS_PER_CALL = 50  # accounts replayed per call to the worker: progress between calls
REJECTED_COLUMNS = ("event_id", "account_id", "reason", "detail", "timestamp", "record")
SETTLEMENT_COLUMNS = (
    "account_id",
    "hour",
    "kind",
    "amount",
    "voucher_part",
    "cash_part",
    "debt_added",
    "debt_after",
    "balance_after",
    "seq",
)
REBILL_COLUMNS = ("account_id", "hour", "old_amount", "new_amount", "delta")
TABLE_LIMIT = 100  # rows a table shows unless --limit says otherwise (JSON and CSV: all)
# columns a table leaves out first when the terminal is too narrow (JSON and CSV have them all)
BILL_OPTIONAL = ("free_tokens", "quantity", "billed_input_tokens", "billed_output_tokens", "api_key_id")
SETTLEMENT_OPTIONAL = ("seq", "debt_added", "voucher_part", "cash_part")


class UsageError(Exception):
    """Bad usage or bad input: exit 2."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_epoch() -> str:
    """Names one life of the embedded broker's log; sorts in time order."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def operator_key(settings: Settings) -> bytes:
    """The control key, for the commands that write control records (ticks, rebills, barriers)."""
    from pipeline.runtime import ControlKeyMissing, control_key

    try:
        return control_key(settings.data_dir, settings.control_key)
    except ControlKeyMissing as exc:
        raise UsageError(str(exc)) from None


def api_token_checked(settings: Settings) -> str:
    """The operator token of the worker's API; refuses an API beyond loopback without a token."""
    import secrets

    from pipeline.serve.api import is_loopback

    if not is_loopback(settings.api_host) and not settings.api_token:
        raise UsageError(
            f"BILLING_API_HOST={settings.api_host} serves bills beyond this machine: set BILLING_API_TOKEN "
            "(a long random secret; clients send it as 'Authorization: Bearer <token>')"
        )
    return settings.api_token or secrets.token_urlsafe(32)


def kafka_of(settings: Settings) -> str:
    if settings.kafka:
        return settings.kafka
    running = read_runtime(settings.data_dir)
    if running is None:
        raise UsageError(
            f"no Kafka to talk to: start `billing up` (data dir {settings.data_dir}) in another terminal, or set BILLING_KAFKA / --kafka"
        )
    return running.kafka


# -- commands -------------------------------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ingest.broker import EmbeddedBroker
    from pipeline.ingest.topics import ensure_all
    from pipeline.runtime import Runtime, clear_runtime, write_runtime
    from pipeline.stream.app import Worker

    running = read_runtime(settings.data_dir)
    if running is not None:
        raise UsageError(f"`billing up` already runs on data dir {settings.data_dir} (pid {running.pid}); stop it first")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    operator_token = api_token_checked(settings)
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
            write_runtime(
                settings.data_dir, Runtime(os.getpid(), bootstrap, url, epoch, datetime.now(timezone.utc).isoformat(), operator_token)
            )
            say(f"billing: query    API at {url} (used by `billing bills|rejected|account|wait|sql` in other terminals)")
            say(f"billing: console  {url}/console (accounts, hourly charts, bills, the operator's overview)")
            say(f"billing: ready in {time.monotonic() - started:.1f}s; publish with `billing publish FILE`; Ctrl-C stops")
            if args.demo:
                threading.Thread(target=run_demo, args=(settings, bootstrap, url, args.demo_records), daemon=True).start()

        worker = Worker(settings, bootstrap, epoch, on_api=on_api, operator_token=operator_token)
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
    return f"embedded (chdb) at {url[len('chdb://') :]}" if url.startswith("chdb:") else "server " + url.split("@")[-1]


def run_demo(settings: Settings, bootstrap: str, api_url: str, records: int) -> None:
    from pipeline.demo.workload import generate
    from pipeline.ingest.publish import publish_lines
    from pipeline.store.reader import ApiReader

    say(f"billing: demo     generating {records} records (several accounts, all models, price dates, plugins, bad records)")
    from pipeline.core.control import sign_line

    key = operator_key(settings)  # the demo's closing clock ticks are the operator's, signed
    lines = [sign_line(line.encode(), key) for line in generate(records, seed=int(time.time()) % 1000)]
    report = publish_lines(lines, bootstrap, settings.input_topic, total=len(lines))
    say(f"billing: demo     published {report.total} records: " + ", ".join(f"{k} {v}" for k, v in sorted(report.sent.items())))
    from pipeline.runtime import read_runtime as _running

    running = _running(settings.data_dir)
    reader = ApiReader(api_url, token=running.operator_token if running else settings.api_token)
    if not wait_for(reader, bootstrap, settings, timeout=300):
        say("billing: demo     the worker did not catch up within 300 s")
        return
    bills = reader.bills(None, None, None)
    rejected = reader.rejected(None, None)
    total = sum((Decimal(b["amount"]) for b in bills), Decimal(0))
    say(f"billing: demo     {len(bills)} bill lines, total {total:.6f} CNY; {len(rejected)} rejected records")
    tables.emit(bills[-12:], "table", BILL_COLUMNS, out=sys.stderr)
    say("billing: demo     try `billing bills --format json`, `billing rejected`, `billing account <id>` in another terminal")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.runtime import Runtime, clear_runtime, write_runtime
    from pipeline.stream.app import Worker

    bootstrap = kafka_of(settings)
    embedded = settings.clickhouse_url.startswith("chdb:")
    operator_token = api_token_checked(settings)

    def on_api(url: str) -> None:
        if embedded:  # the other commands reach this engine through the worker
            write_runtime(
                settings.data_dir,
                Runtime(os.getpid(), bootstrap, url, settings.log_epoch, datetime.now(timezone.utc).isoformat(), operator_token),
            )
        say(f"billing: worker consuming {settings.input_topic} at {bootstrap}; API at {url}")
        say(f"billing: core {CORE_BUILD.label}")

    try:
        Worker(settings, bootstrap, settings.log_epoch, on_api=on_api, operator_token=operator_token).run()
    finally:
        if embedded:
            clear_runtime(settings.data_dir, os.getpid())
    return 0


def cmd_publish(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ingest.publish import live_lines, publish_lines, tell
    from pipeline.ingest.topics import ensure_all

    bootstrap = kafka_of(settings)
    if args.file == "-":
        lines: Any = live_lines(sys.stdin.buffer)
        total, source = None, "-"
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        data = path.read_bytes().splitlines()
        lines, total, source = data, len(data), path.name
    if args.control:  # an operator's own file of control records (e.g. clock ticks of a historical load)
        from pipeline.core.control import sign_line

        key = operator_key(settings)
        lines = (sign_line(line, key) if line is not None else None for line in lines)
    from pipeline.ingest.kafka_security import kafka_python_kwargs

    ensure_all(settings, bootstrap)
    report = publish_lines(
        lines,
        bootstrap,
        settings.input_topic,
        total=total,
        source=source,
        timeout_s=args.timeout,
        client_kwargs=kafka_python_kwargs(settings),
    )
    return tell(report, sys.stdout, sys.stderr)


def wait_for(reader: Any, bootstrap: str, settings: Settings, timeout: float) -> bool:
    """Publish a barrier to every partition; done when the workers have written all of them."""
    from kafka import KafkaProducer

    from pipeline.batch.processor import barrier_message
    from pipeline.ingest.kafka_security import kafka_python_kwargs

    barrier = uuid.uuid4().hex
    key = operator_key(settings)
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="billing-wait", acks="all", **kafka_python_kwargs(settings))
    try:
        partitions = sorted(producer.partitions_for(settings.input_topic) or [])
        if not partitions:
            raise UsageError(f"topic {settings.input_topic} does not exist yet: nothing was published")
        sent = [producer.send(settings.input_topic, value=barrier_message(barrier, key), partition=p) for p in partitions]
        producer.flush()
        ends = {meta.partition: meta.offset + 1 for meta in (future.get(timeout=60) for future in sent)}
    finally:
        producer.close()
    deadline = time.monotonic() + timeout
    told = False
    progress = ConsumerProgress("billing: wait", bootstrap, settings.app_id, settings.input_topic, ends)
    while True:
        progress.poll()
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
            progress.done()
            return True
        if time.monotonic() > deadline:
            progress.done(caught_up=False)
            say(f"billing: timed out after {timeout:g}s: {done} of {len(partitions)} partitions caught up; is a worker running?")
            return False
        time.sleep(0.1)


def _reader(settings: Settings) -> Reader:
    """Where a query command reads (store/reader.py), with the catalog's free quota for the
    quota left it shows."""
    return open_reader(settings, load_catalog(settings.catalog).free_quota_tokens)


def cmd_wait(settings: Settings, args: argparse.Namespace) -> int:
    reader = _reader(settings)
    return 0 if wait_for(reader, kafka_of(settings), settings, args.timeout) else 1


def check_range(start: str | None, end: str | None) -> None:
    """`--from` and `--to` are RFC 3339 and in order: the same rule and message for every command."""
    from pipeline.core.timestamps import parse_ts

    first = parse_ts(start) if start else None
    last = parse_ts(end) if end else None
    if first is not None and last is not None and last <= first:
        raise UsageError("--to must be after --from")


def known_account(reader: Any, account: str | None) -> None:
    """An --account filter naming no account is a mistake (a typo), not an empty result: exit 2,
    as `billing account` does."""
    if account and reader.account(account) is None:
        raise UsageError(f"no account {account!r} has any record yet")


def in_time_order(rows: list[dict[str, Any]], time_key: str, *ties: str) -> list[dict[str, Any]]:
    """Oldest to latest, ties in a stable order; --limit keeps the latest. Times are RFC 3339 with one
    offset per column, so they sort as strings; rows without a time come first."""
    return sorted(rows, key=lambda r: (str(r.get(time_key) or ""), *(str(r.get(k, "")) for k in ties)))


def emit_limited(rows: list[dict[str, Any]], args: argparse.Namespace, columns: Any, optional: Any = ()) -> None:
    """The last rows up to --limit, the latest in time order (a table: TABLE_LIMIT unless told;
    JSON and CSV: all unless told), as `tail` does."""
    limit = args.limit if args.limit is not None else (TABLE_LIMIT if args.format == "table" else 0)
    shown = rows[-limit:] if limit else rows
    tables.emit(shown, args.format, columns, optional=optional)
    if len(shown) < len(rows):
        say(f"billing: showing the last {len(shown)} of {len(rows)} rows; --limit N for more, --limit 0 for all")


def cmd_bills(settings: Settings, args: argparse.Namespace) -> int:
    check_range(args.start, args.end)
    reader = _reader(settings)
    known_account(reader, args.account)
    rows = in_time_order(reader.bills(args.account, args.start, args.end), "hour", "account_id", "api_key_id", "item")
    emit_limited(rows, args, BILL_COLUMNS, BILL_OPTIONAL)
    return 0


def cmd_rejected(settings: Settings, args: argparse.Namespace) -> int:
    reader = _reader(settings)
    known_account(reader, args.account)
    rows = in_time_order(
        [queries.with_record(r) for r in reader.rejected(args.account, args.reason)], "timestamp", "account_id", "event_id"
    )
    emit_limited(rows, args, REJECTED_COLUMNS if args.format != "json" else None, ("record",))
    return 0


def cmd_reasons(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.core import reasons

    tables.emit(reasons.rows(), args.format, ("reason", "meaning"))
    return 0


def cmd_account(settings: Settings, args: argparse.Namespace) -> int:
    reader = _reader(settings)
    row = reader.account(args.account_id)
    if row is None:
        raise UsageError(f"no account {args.account_id!r} has any record yet")
    if args.format == "table":
        for key, value in row.items():
            print(f"{key:18} {tables._cell(value)}")
    else:
        tables.emit([row], args.format)
    return 0


def cmd_settle(settings: Settings, args: argparse.Namespace) -> int:
    """Close the hours of every known account up to T: a clock tick into each account's log."""
    from pipeline.batch.topic_json import tick
    from pipeline.core.timestamps import parse_ts
    from pipeline.ingest.publish import publish_lines

    until = parse_ts(args.until)
    reader = _reader(settings)
    accounts = [a for a in reader.account_ids() if a]
    key = operator_key(settings)
    report = publish_lines((tick(a, until, key) for a in accounts), kafka_of(settings), settings.input_topic, total=len(accounts))
    print(f"published a clock tick at {args.until} for {report.total} accounts; `billing wait` then shows their settlements")
    return 0 if not report.failures else 1


def cmd_settlements(settings: Settings, args: argparse.Namespace) -> int:
    reader = _reader(settings)
    known_account(reader, args.account)
    # ledger order, each account's settlements as they were made (an adjustment for an earlier hour
    # comes after the hours settled before it): --limit keeps the latest of the last account, or of
    # the one --account names
    emit_limited(reader.settlements(args.account), args, SETTLEMENT_COLUMNS, SETTLEMENT_OPTIONAL)
    return 0


def cmd_rebill(settings: Settings, args: argparse.Namespace) -> int:
    """Re-price [from, to) with a catalog; print per account-hour old, new, delta; apply unless --dry-run."""
    import json as _json

    from pipeline.cli.progress import Progress
    from pipeline.core.facts import STALE_REBILL
    from pipeline.ingest.publish import publish_lines
    from pipeline.stream.rebill import audit_record, new_run_id, refused_accounts, without_accounts

    check_range(args.start, args.end)
    catalog_path = Path(args.catalog) if args.catalog else (settings.catalog or DEFAULT_CATALOG)
    catalog = load_catalog(catalog_path)  # refuse a bad catalog before any work
    data = _json.loads(catalog_path.read_text(encoding="utf-8"))
    reader = open_reader(settings, catalog.free_quota_tokens)
    accounts = reader.rebill_accounts(args.start, args.end, args.account)
    say(
        f"billing: rebill   replaying the whole log of {len(accounts)} accounts with records in "
        f"[{args.start}, {args.end}) under catalog {catalog.version}"
    )
    started = time.monotonic()
    run_id, chunks = new_run_id(), []
    progress = Progress("billing: rebill", total=len(accounts), unit="accounts replayed")
    for i in range(0, len(accounts), REBILL_ACCOUNTS_PER_CALL):
        chunks.append(reader.rebill_plan(data, args.start, args.end, accounts[i : i + REBILL_ACCOUNTS_PER_CALL], run_id))
        progress.update(min(i + REBILL_ACCOUNTS_PER_CALL, len(accounts)))
    progress.done()
    audit = audit_record(run_id, args.start, args.end, args.account, catalog.version, chunks)
    records = [r for c in chunks for r in c["records"]]
    elapsed = time.monotonic() - started
    listed = [d for d in audit["diffs"] if Decimal(d["delta"]) != 0]
    unchanged = len(audit["diffs"]) - len(listed)
    say(
        f"billing: rebill   {audit['records_read']} records replayed in {elapsed:.1f}s "
        f"({audit['records_read'] / max(elapsed, 1e-9):,.0f}/s); {audit['lines_changed']} lines change, "
        f"{len(audit['now_billed'])} rejected calls now billed; {len(listed)} account-hours change in amount"
        + (
            f" (listed; {unchanged} more change only in token counts, delta 0, not listed)"
            if unchanged
            else (" (listed)" if listed else "")
        )
    )
    tables.emit(listed, args.format, REBILL_COLUMNS)
    if args.dry_run:
        say("billing: rebill   dry run: nothing written")
        return 0
    bootstrap = kafka_of(settings)
    if records:
        from pipeline.core.control import sign_line

        key = operator_key(settings)
        report = publish_lines(
            (sign_line(r.encode(), key) for r in records), bootstrap, settings.input_topic, total=len(records), quiet=True
        )
        if report.failures:
            raise RuntimeError(f"could not publish the revised lines: {report.failures[0]}; run the same rebill again")
        if not wait_for(reader, bootstrap, settings, timeout=args.timeout):
            return 1
    stale = refused_accounts(reader.rejected(None, STALE_REBILL), run_id)
    reader.write_rebill_audit(without_accounts(audit, stale, records))
    if stale:
        say(
            f"billing: rebill   {len(stale)} accounts got a late call for a rebilled line while this rebill ran, so their "
            f"lines were NOT revised (listed by `billing rejected --reason {STALE_REBILL}`): {', '.join(sorted(stale)[:20])}"
            f"{' ...' if len(stale) > 20 else ''}. Run the same rebill again; the other accounts are done."
        )
        return 1
    say(f"billing: rebill   run {audit['run_id']} applied; audit in rebill_runs / rebill_diffs")
    return 0


def cmd_sql(settings: Settings, args: argparse.Namespace) -> int:
    """Read-only SQL on the bill views (docs/sql.md): through the running worker, or the engine or server itself."""
    from pipeline.store.sqlquery import as_dicts, check_statement, parse_params

    if args.query is None and sys.stdin.isatty():
        raise UsageError('give the query as an argument (billing sql "SELECT ...") or on stdin (billing sql < query.sql)')
    text = args.query if args.query not in (None, "-") else sys.stdin.read()
    params = parse_params(args.param)
    check_statement(text)  # before reaching for the worker or the engine
    reader = _reader(settings)
    result = reader.sql(text, args.max_rows, args.timeout, params)
    tables.emit(as_dicts(result), args.format, result["columns"])
    if result["truncated"]:
        say(f"billing: sql      result cut at {result['max_rows']} rows (--max-rows raises it; LIMIT/aggregate to see less)")
    return 0


def cmd_console(settings: Settings, args: argparse.Namespace) -> int:
    """The management console against BILLING_CLICKHOUSE (a server deployment), read-only."""
    from pipeline.serve.console.serve import serve_console

    return serve_console(settings, args.host, args.port)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.store import chcluster, migrations
    from pipeline.store.chclient import CLUSTER_DDL_DIR, DDL_DIR, connect

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
    from pipeline.stream.partitioning import confirm_drained

    topic = args.topic or settings.input_topic
    reader = _reader(settings)
    ok = confirm_drained(reader, kafka_of(settings), settings, topic, args.timeout, wait_for)
    print(f"{topic}: {'drained: every record published to it so far is billed' if ok else 'NOT drained'}")
    return 0 if ok else 1


# -- parsing ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kafka", help="Kafka bootstrap servers (env BILLING_KAFKA; default: the embedded broker of `billing up`)")
    common.add_argument("--clickhouse", help="ClickHouse URL (env BILLING_CLICKHOUSE; default chdb://<data-dir>/clickhouse)")
    common.add_argument("--data-dir", help="data directory (env BILLING_DATA_DIR; default ./.billing)")
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v the pipeline's INFO lines, -vv also DEBUG and the Kafka/Faust libraries' INFO, -vvv everything",
    )
    query = argparse.ArgumentParser(add_help=False, parents=[common])  # commands that print rows
    query.add_argument(
        "--format",
        choices=tables.FORMATS,
        default="table",
        help="table (fits the terminal, ids shortened), json (one object per line, every field) or csv; default table",
    )
    listing = argparse.ArgumentParser(add_help=False)  # commands that list many rows
    listing.add_argument(
        "--limit",
        type=non_negative,
        metavar="N",
        help=f"only the last N rows, the latest (default: {TABLE_LIMIT} in a table, all in json/csv; 0: all)",
    )
    parser = argparse.ArgumentParser(
        prog="billing",
        description="Usage metering and hourly billing pipeline.",
        epilog=EXAMPLES[""],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="run the embedded stack (broker, worker, ClickHouse) in the foreground")
    up.add_argument("--demo", action="store_true", help="also publish a realistic synthetic workload")
    up.add_argument("--demo-records", type=int, default=20000, help="records in the demo workload (default 20000)")
    up.set_defaults(run=cmd_up)
    sub.add_parser("worker", parents=[common], help="the pipeline worker alone (production: N replicas)").set_defaults(run=cmd_worker)
    pub = sub.add_parser("publish", parents=[common], help="publish JSON-lines input records (FILE or - for stdin)")
    pub.add_argument("file", help="a JSON-lines file, or - to read standard input (records are sent as they arrive)")
    pub.add_argument(
        "--control",
        action="store_true",
        help="operators only: sign the file's control records (clock.tick, rebill.lines) with the control key "
        "(BILLING_CONTROL_KEY or the data dir's control.key); without it the worker rejects them as unauthorized",
    )
    pub.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a record may wait for Kafka before it counts as not sent (default 120)",
    )
    pub.set_defaults(run=cmd_publish)
    wait = sub.add_parser("wait", parents=[common], help="return once everything published so far is queryable")
    wait.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds, exit 1 (default 300)")
    wait.set_defaults(run=cmd_wait)
    bills = sub.add_parser("bills", parents=[query, listing], help="hourly bill lines")
    bills.add_argument("--account", help="only this account (exit 2 if it has no record)")
    bills.add_argument("--from", dest="start", help="RFC 3339; lines whose hour is at or after it")
    bills.add_argument("--to", dest="end", help="RFC 3339; lines whose hour is before it")
    bills.set_defaults(run=cmd_bills)
    rej = sub.add_parser("rejected", parents=[query, listing], help="records that could not be billed, with the reason")
    rej.add_argument("--account", help="only this account (exit 2 if it has no record)")
    rej.add_argument(
        "--reason", choices=REASONS, metavar="REASON", help="only this reason; `billing reasons` lists them: " + ", ".join(REASONS)
    )
    rej.set_defaults(run=cmd_rejected)
    acc = sub.add_parser("account", parents=[query], help="an account's status, balance, vouchers, free tokens left")
    acc.add_argument("account_id", help="the main account's id, as in the records' account_id")
    acc.set_defaults(run=cmd_account)
    settle = sub.add_parser("settle", parents=[common], help="close every account's hours up to a time (historical loads)")
    settle.add_argument("--until", required=True, help="RFC 3339; hours ending (plus the grace) by then are settled")
    settle.set_defaults(run=cmd_settle)
    stl = sub.add_parser("settlements", parents=[query, listing], help="hourly settlements against vouchers and cash")
    stl.add_argument("--account", help="only this account (exit 2 if it has no record)")
    stl.set_defaults(run=cmd_settlements)
    rebill = sub.add_parser("rebill", parents=[query], help="re-price a time range with a catalog and write revised bills")
    rebill.add_argument("--from", dest="start", required=True, help="RFC 3339, inclusive (bill hours at or after it)")
    rebill.add_argument("--to", dest="end", required=True, help="RFC 3339, exclusive")
    rebill.add_argument("--catalog", help="price catalog file (default: the worker's, schemas/catalog.json)")
    rebill.add_argument("--account", help="only this account")
    rebill.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    rebill.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="seconds to wait for the worker to apply it (default 600)"
    )
    rebill.set_defaults(run=cmd_rebill)
    sql = sub.add_parser("sql", parents=[query], help="read-only SQL on the bill views (docs/sql.md)")
    sql.add_argument("query", nargs="?", help="one SELECT (or - / nothing: read it from stdin)")
    sql.add_argument("--param", action="append", metavar="NAME=VALUE", help="a value for {NAME:Type} in the query (repeatable)")
    sql.add_argument("--max-rows", type=int, default=10_000, help="rows shown at most (default 10000; says when cut)")
    sql.add_argument("--timeout", type=float, default=30.0, help="seconds the query may run (default 30)")
    sql.set_defaults(run=cmd_sql)
    console = sub.add_parser("console", parents=[common], help="serve the management console against the configured ClickHouse")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    console.add_argument("--port", type=int, default=8180, help="port (default 8180; 0: a free one)")
    console.set_defaults(run=cmd_console)
    sub.add_parser("migrate", parents=[common], help="apply the pending ClickHouse schema migrations").set_defaults(run=cmd_migrate)
    drained = sub.add_parser("drained", parents=[common], help="exit 0 once a topic's records are all billed (growing partitions)")
    drained.add_argument("--topic", help="the old input topic (default: the configured one)")
    drained.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds, exit 1 (default 300)")
    drained.set_defaults(run=cmd_drained)
    sub.add_parser("reasons", parents=[query], help="the rejection reasons, in the rule book's order, with their meaning").set_defaults(
        run=cmd_reasons
    )
    add_examples(sub)
    return parser


def add_examples(sub: Any) -> None:
    """An example (epilog) under every command's --help, kept in EXAMPLES."""
    for name, command in sub.choices.items():
        command.epilog = EXAMPLES.get(name)
        command.formatter_class = argparse.RawDescriptionHelpFormatter


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("xingchen-billing")
    except PackageNotFoundError:  # run from a source tree without installing
        number = "unknown"
    return f"billing {number} (Python {sys.version.split()[0]}, core {CORE_BUILD.label})"


EXAMPLES = {
    "": "examples:\n  billing up --demo                       # terminal 1: the whole stack, with sample data\n"
    "  billing publish usage.jsonl && billing wait   # terminal 2\n  billing bills --account 1001 --limit 20\n"
    "  billing <command> --help                # each command's options and an example",
    "up": "example:\n  billing up --demo --demo-records 5000\n  (then, in another terminal: billing bills)",
    "worker": "example:\n  BILLING_KAFKA=kafka:9092 BILLING_CLICKHOUSE=http://billing:PASS@clickhouse:8123/billing billing worker",
    "publish": "examples:\n  billing publish usage.jsonl\n  tail -f usage.jsonl | billing publish -",
    "wait": "example:\n  billing publish usage.jsonl && billing wait --timeout 600 && billing bills",
    "bills": "examples:\n  billing bills --account 1001 --from 2024-07-01T00:00:00+08:00 --to 2024-08-01T00:00:00+08:00\n"
    "  billing bills --format csv --limit 0 > bills.csv",
    "rejected": "examples:\n  billing rejected --reason unknown_model --limit 20\n  billing rejected --account 1001 --format json",
    "account": "example:\n  billing account 1001 --format json",
    "settle": "example:\n  billing settle --until 2024-08-01T00:00:00+08:00 && billing wait",
    "settlements": "example:\n  billing settlements --account 1001 --limit 24",
    "rebill": "example:\n  billing rebill --from 2024-07-01T00:00:00+08:00 --to 2024-07-02T00:00:00+08:00 --catalog fixed.json --dry-run",
    "migrate": "example:\n  BILLING_CLICKHOUSE=http://billing:PASS@clickhouse:8123/billing billing migrate",
    "reasons": "example:\n  billing reasons --format csv",
    "sql": 'examples:\n  billing sql "SELECT account_id, sum(amount) AS amount FROM monthly_bills GROUP BY account_id ORDER BY amount DESC"\n'
    "  billing sql --param acc=1001 --format csv < query.sql",
    "console": "example:\n  BILLING_CLICKHOUSE=https://billing:PASS@clickhouse:8443/billing BILLING_API_TOKEN=... billing console --host 0.0.0.0",
    "drained": "example:\n  billing drained --topic billing.input --timeout 600 && kubectl rollout restart deployment/billing-worker",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if "" in (getattr(args, "account", None), getattr(args, "account_id", None)):  # never "every account"
        say("billing: the account id is empty: name an account, or leave --account out for every account")
        return 2
    try:
        settings = load_settings(args.kafka, args.clickhouse, args.data_dir)
    except SettingsError as exc:
        say(f"billing: {exc}")
        return 2
    logs.setup(args.verbose, settings.log_format, long_running=args.command in ("up", "worker"))
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
