"""Issue 21: what a real Kafka and ClickHouse cluster does to billing, simulated on the embedded
broker (Tansu) and engine (chdb), each numbered failure of the issue as a test that now passes."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from kafka import KafkaAdminClient

from pipeline.batch.processor import BatchProcessor, Message
from pipeline.core.catalog import load_catalog
from pipeline.ingest.broker import ensure_topics
from pipeline.ingest.topics import WeakTopic, ensure_all
from pipeline.settings import Settings
from pipeline.store import migrations, statestore
from pipeline.store.chclient import DDL_DIR
from pipeline.stream import logidentity
from pipeline.stream.partitioning import PartitionMismatch, PlacementCheck, partition_for

pytestmark = pytest.mark.integration


def recharge(account: str, amount: str, minute: int = 0) -> bytes:
    return json.dumps(
        {"type": "credit.recharge", "account_id": account, "amount": amount, "timestamp": f"2026-03-01T10:{minute:02d}:00+08:00"}
    ).encode()


def balance(client: Any, account: str) -> Decimal:
    return statestore.load_states(client, [account])[account].cash_balance


def account_moving_between(old: int, new: int) -> str:
    """An account whose partition changes when the topic grows from `old` to `new` partitions."""
    for i in range(1000):
        account = f"acct-grow-{uuid.uuid4().hex[:6]}-{i}"
        if partition_for(account.encode(), old) != partition_for(account.encode(), new):
            return account
    raise AssertionError("no such account")


def processor(client: Any, epoch: str, partitions: int | None) -> BatchProcessor:
    worker = BatchProcessor(client, load_catalog(), epoch, auto_tick=False)
    worker.placement = PlacementCheck(partitions) if partitions else None
    return worker


# 1. Adding partitions to the live input topic -----------------------------------------------


def test_partitions_added_to_the_live_topic_corrupt_a_balance_without_the_guard(client) -> None:
    """The issue's reproduction, kept as the reason for the guard: +100, then +50 on the new
    partition (one worker) and +7 from the old partition's backlog (another): not 157."""
    account, epoch = account_moving_between(4, 5), uuid.uuid4().hex
    key, old, new = account.encode(), partition_for(account.encode(), 4), partition_for(account.encode(), 5)
    first, second = processor(client, epoch, None), processor(client, epoch, None)
    first.process([Message(old, 0, key, recharge(account, "100", 0))])
    second.process([Message(new, 0, key, recharge(account, "50", 2))])
    first.process([Message(old, 1, key, recharge(account, "7", 1))])  # its cached state never saw +50
    assert balance(client, account) != Decimal("157")


def test_partitions_added_are_refused_and_the_grow_procedure_gives_157(client) -> None:
    account, epoch = account_moving_between(4, 5), uuid.uuid4().hex
    key, old, new = account.encode(), partition_for(account.encode(), 4), partition_for(account.encode(), 5)
    first = processor(client, epoch, 4)
    first.process([Message(old, 0, key, recharge(account, "100", 0))])
    # a worker configured for 4 partitions is handed the new partition 4 or a remapped record: it stops
    with pytest.raises(PartitionMismatch, match="configured for 4|belongs to partition"):
        processor(client, epoch, 4).process([Message(new, 0, key, recharge(account, "50", 2))])
    # an operator who raises BILLING_PARTITIONS to 5 in place: the old partition's backlog is refused
    with pytest.raises(PartitionMismatch, match=f"belongs to partition {new} of 5"):
        processor(client, epoch, 5).process([Message(old, 1, key, recharge(account, "7", 1))])
    assert balance(client, account) == Decimal("100")  # nothing folded out of order
    first.process([Message(old, 1, key, recharge(account, "7", 1))])  # the old layout drains its backlog
    assert balance(client, account) == Decimal("107")
    # grow: a new topic (12 partitions) under its own epoch, read only once the old one is drained
    grown = processor(client, uuid.uuid4().hex, 12)
    grown.process([Message(partition_for(key, 12), 0, key, recharge(account, "50", 2))])
    assert balance(client, account) == Decimal("157")


# 2. A re-created topic restarts its offsets ---------------------------------------------------


def test_a_recreated_topic_is_a_new_epoch_not_five_skipped_recharges(client, broker: str) -> None:
    topic, account = f"recreated-{uuid.uuid4().hex[:6]}", f"acct-recreated-{uuid.uuid4().hex[:6]}"
    key = account.encode()
    ensure_topics(broker, {topic: 1})
    before = logidentity.describe(broker, topic)
    epoch = logidentity.resolve(client, logidentity.AUTO, before)
    assert before.topic_id and epoch.endswith(before.topic_id)
    BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(
        [Message(0, i, key, recharge(account, "1", i)) for i in range(5)]
    )
    assert balance(client, account) == Decimal("5")

    admin = KafkaAdminClient(bootstrap_servers=broker)
    admin.delete_topics([topic])
    admin.close()
    ensure_topics(broker, {topic: 1})
    after = logidentity.describe(broker, topic)
    assert after.topic_id != before.topic_id
    new_records = [Message(0, i, key, recharge(account, "1", 10 + i)) for i in range(5)]
    # the failure under a fixed epoch: offsets 0-4 are "already applied", all five skipped
    stale = BatchProcessor(client, load_catalog(), epoch, auto_tick=False).process(new_records)
    assert stale.skipped == 5 and balance(client, account) == Decimal("5")
    # auto: the new topic identity is a new epoch, and every recharge is applied
    new_epoch = logidentity.resolve(client, logidentity.AUTO, after)
    assert new_epoch != epoch
    fresh = BatchProcessor(client, load_catalog(), new_epoch, auto_tick=False).process(new_records)
    assert fresh.skipped == 0 and balance(client, account) == Decimal("10")


def test_an_explicit_epoch_refuses_a_topic_with_another_identity(client, broker: str) -> None:
    topic, epoch = f"pinned-{uuid.uuid4().hex[:6]}", f"pinned-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, {topic: 1})
    identity = logidentity.describe(broker, topic)
    assert logidentity.resolve(client, epoch, identity) == epoch
    assert logidentity.resolve(client, epoch, identity) == epoch  # the same topic again: fine
    moved = logidentity.LogIdentity(topic, identity.cluster_id, str(uuid.uuid4()))
    with pytest.raises(logidentity.LogIdentityChanged, match="re-created, restored or failed over"):
        logidentity.resolve(client, epoch, moved)


def test_a_worker_refuses_to_start_on_a_recreated_topic_under_its_old_epoch(broker: str, inprocess_dir: Path) -> None:
    from pipeline.stream.app import Worker

    settings = Settings(
        data_dir=inprocess_dir, kafka=broker, auto_tick=False, app_id="billing-recreated", log_epoch=f"fixed-{uuid.uuid4().hex[:6]}"
    )
    ensure_all(settings, broker)
    Worker(settings, broker, settings.log_epoch)._db.shutdown(wait=False)  # binds the epoch to this topic
    admin = KafkaAdminClient(bootstrap_servers=broker)
    admin.delete_topics([settings.input_topic])
    admin.close()
    with pytest.raises(logidentity.LogIdentityChanged, match="offsets restarted"):
        Worker(settings, broker, settings.log_epoch)


# 3. Topics: durable, and never created by a production worker ---------------------------------


def test_a_production_worker_does_not_create_topics(broker: str) -> None:
    settings = Settings(kafka=broker, create_topics=False, topic_prefix=f"nocreate{uuid.uuid4().hex[:6]}")
    with pytest.raises(WeakTopic, match="does not exist .*topics step"):
        ensure_all(settings, broker)
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        assert not [t for t in admin.list_topics() if t.startswith(settings.topic_prefix)]
    finally:
        admin.close()


def test_topics_weaker_than_required_stop_the_worker(broker: str) -> None:
    """Tansu reports no topic configs and one replica: a worker that requires replication 3 and
    min.insync.replicas 2 refuses them, naming each problem."""
    settings = Settings(kafka=broker, topic_prefix=f"weak{uuid.uuid4().hex[:6]}")
    ensure_all(settings, broker)  # the embedded default: created, nothing required
    with pytest.raises(WeakTopic) as err:
        ensure_all(settings.with_(create_topics=False, topic_replication=3, topic_min_insync=2), broker)
    text = str(err.value)
    assert "replication factor 1, need 3" in text and "min.insync.replicas=unknown, need >= 2" in text
    assert "unclean.leader.election.enable=unknown, need false" in text


# 7. Versioned schema migrations ----------------------------------------------------------------


@pytest.fixture
def empty_db(inprocess_dir: Path) -> Any:
    """A database of its own in the shared embedded engine (one chdb path per process)."""
    url = Settings(data_dir=inprocess_dir).clickhouse_url
    name = f"mig_{uuid.uuid4().hex[:8]}"
    clickhouse_connect.get_client(dsn=url).command(f"CREATE DATABASE {name}")
    return clickhouse_connect.get_client(dsn=url, database=name)


def write(ddl: Path, name: str, text: str) -> None:
    ddl.mkdir(exist_ok=True)
    (ddl / name).write_text(text, encoding="utf-8")


def test_migrations_apply_once_in_order_and_refuse_an_edited_file(empty_db, tmp_path: Path) -> None:
    ddl = tmp_path / "ddl"
    write(ddl, "001_core.sql", "CREATE TABLE IF NOT EXISTS t (a String) ENGINE = MergeTree ORDER BY a;\n")
    write(ddl, "003_more.sql", "-- 003\nALTER TABLE t ADD COLUMN b UInt8 DEFAULT 1;\n")
    assert [m.version for m in migrations.apply(empty_db, ddl)] == [1, 3]
    assert migrations.apply(empty_db, ddl) == []  # applied once: an ALTER would fail the second time
    assert migrations.verify(empty_db, ddl) == 3
    # another engineer's 002 lands after 003 was applied: it is applied, the rest is left alone
    write(ddl, "002_views.sql", "CREATE VIEW IF NOT EXISTS v AS SELECT a FROM t;\n")
    with pytest.raises(migrations.SchemaMismatch, match=r"version 003 but this worker needs 003 \(not applied: 002_views.sql\)"):
        migrations.verify(empty_db, ddl)
    assert [m.version for m in migrations.apply(empty_db, ddl)] == [2]
    rows = empty_db.query("SELECT version, name, length(checksum) FROM schema_migrations ORDER BY version").result_rows
    assert rows == [(1, "core", 64), (2, "views", 64), (3, "more", 64)]
    # a comment changes nothing; a changed statement is refused
    write(ddl, "001_core.sql", "-- reworded\nCREATE TABLE IF NOT EXISTS t (a String) ENGINE = MergeTree ORDER BY a;\n")
    assert migrations.verify(empty_db, ddl) == 3
    write(ddl, "001_core.sql", "CREATE TABLE IF NOT EXISTS t (a String, c UInt8) ENGINE = MergeTree ORDER BY a;\n")
    with pytest.raises(migrations.SchemaMismatch, match="001_core.sql changed after it was applied"):
        migrations.apply(empty_db, ddl)
    write(ddl, "001_other.sql", "SELECT 1;\n")
    with pytest.raises(migrations.SchemaMismatch, match="two migrations with version 1"):
        migrations.discover(ddl)


def test_a_worker_refuses_a_schema_behind_its_code_and_the_embedded_one_migrates(empty_db) -> None:
    production = Settings(migrate_on_start=False)
    latest = migrations.discover(DDL_DIR)[-1].version
    with pytest.raises(migrations.SchemaMismatch, match=rf"version 000 but this worker needs {latest:03d} .*run `billing migrate`"):
        migrations.prepare(empty_db, production)
    # a data dir from before the migrations: the tables of 001 exist, nothing is recorded
    for statement in migrations.discover(DDL_DIR)[0].statements:
        empty_db.command(statement)
    assert migrations.prepare(empty_db, Settings()) == latest  # `billing up`: applies 001 (a no-op) and the rest itself
    assert migrations.prepare(empty_db, production) == latest
    ttl = empty_db.query("SHOW CREATE TABLE rate_windows").result_rows[0][0]
    assert "TTL toDateTime(window_start) + toIntervalDay(7)" in ttl


# 5. `billing publish` never reorders an account's records -------------------------------------


def test_publish_stops_at_a_failed_send_and_resuming_keeps_every_accounts_order(broker: str, monkeypatch) -> None:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaTimeoutError
    from kafka.future import Future

    from pipeline.ingest import publish

    real_make = publish.make_producer
    sends: list[bytes] = []

    class FailingThirdSend:
        """The real producer, whose third send is never acknowledged (a broker away too long)."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def send(self, topic: str, key: bytes, value: bytes, headers: Any = None) -> Any:
            sends.append(key)
            if len(sends) == 3:
                future = Future()
                future.failure(KafkaTimeoutError("delivery timed out (injected)"))
                return future
            return self.real.send(topic, key=key, value=value, headers=headers)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    monkeypatch.setattr(publish, "MAX_BUFFERED_RECORDS", 4)  # several messages per account
    monkeypatch.setattr(publish, "make_producer", lambda bootstrap, *args, **kw: FailingThirdSend(real_make(bootstrap, *args, **kw)))
    topic = f"publish-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, {topic: 2})
    accounts = [f"acct-pub-{i}" for i in range(3)]
    lines = [recharge(accounts[i % 3], str(i + 1), i % 60) for i in range(30)]
    report = publish.publish_lines(lines, broker, topic, quiet=True)
    assert report.failures and report.resume_line is not None
    assert len(sends) == 3, "nothing may be handed to the producer after a send failed"
    monkeypatch.setattr(publish, "make_producer", real_make)
    again = publish.publish_lines(lines[report.resume_line - 1 :], broker, topic, quiet=True)
    assert not again.failures

    consumer = KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest", consumer_timeout_ms=3000, group_id=None)
    from pipeline.batch.framing import split_message

    log: dict[str, list[str]] = {}
    for message in sorted(consumer, key=lambda m: (m.partition, m.offset)):
        for record in split_message(message.value):
            body = json.loads(record)
            log.setdefault(body["account_id"], []).append(body["amount"])
    consumer.close()
    for account in accounts:
        first_seen = list(dict.fromkeys(log[account]))  # duplicates are skipped by the worker; order is what counts
        assert first_seen == [json.loads(x)["amount"] for x in lines if json.loads(x)["account_id"] == account], account


# 4. The commit point on a cluster: the settings are sent with every query and checked at start --


def test_cluster_mode_sends_the_commit_point_settings_and_checks_them(inprocess_dir: Path, empty_db) -> None:
    from pipeline.store import chcluster

    url = Settings(data_dir=inprocess_dir).clickhouse_url
    database = empty_db.database
    plain = clickhouse_connect.get_client(dsn=url, database=database)
    with pytest.raises(chcluster.ClusterConsistencyError, match=r"insert_quorum=0 \(need auto\).*select_sequential_consistency=0"):
        chcluster.check(plain)
    # what client_options gives a server URL in cluster mode, on the embedded engine
    options = chcluster.client_options(Settings(clickhouse_cluster=True), "http://u:p@clickhouse:8123/billing")
    cluster = clickhouse_connect.get_client(dsn=url, database=database, **options)
    assert chcluster.check(cluster) == {
        "insert_distributed_sync": "1",
        "insert_quorum": "auto",
        "insert_quorum_parallel": "0",
        "select_sequential_consistency": "1",
        "distributed_product_mode": "local",
    }
    # single-server tables under cluster mode: refused, not written to one node
    migrations.apply(cluster, DDL_DIR)
    with pytest.raises(chcluster.ClusterConsistencyError, match="not the cluster ones: raw_records is ReplacingMergeTree"):
        chcluster.check_replicated(cluster, migrations.CLUSTER_TABLES)
