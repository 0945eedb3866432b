"""Issue 21 without a broker: partition placement, TLS/SASL client settings, topic durability,
output delivery order, the ClickHouse client options of a cluster."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiokafka.partitioner import DefaultPartitioner as AioPartitioner
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from pipeline.batch.processor import Message
from pipeline.ingest import kafka_security, topics
from pipeline.settings import Settings
from pipeline.store import chcluster
from pipeline.stream import delivery
from pipeline.stream.partitioning import PartitionMismatch, PlacementCheck, check_assignment, partition_for


def test_partition_for_is_what_kafka_python_and_aiokafka_pick() -> None:
    aio = AioPartitioner()
    for n in (4, 5, 12, 24):
        for i in range(300):
            key = f"acct-{i}".encode()
            expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % n
            assert partition_for(key, n) == expected == aio(key, list(range(n)), list(range(n)))


def test_a_record_on_the_wrong_partition_for_its_account_stops_the_batch() -> None:
    check = PlacementCheck(4)
    home = partition_for(b"acct-1", 4)
    check.check([Message(home, 0, b"acct-1", b"{}"), Message((home + 1) % 4, 7, None, b"barrier")])  # keyless: not checked
    with pytest.raises(PartitionMismatch, match=r"key b'acct-1' belongs to partition") as err:
        check.check([Message((home + 1) % 4, 3, b"acct-1", b"{}")])
    assert "offset 3" in str(err.value) and "murmur2" in str(err.value)


def test_a_partition_beyond_the_configured_count_is_refused_on_assignment_and_in_a_batch() -> None:
    check_assignment("billing.input", {0, 1, 2, 3}, 4)
    with pytest.raises(PartitionMismatch, match=r"partition\(s\) \[4, 5\] exist .* configured for 4"):
        check_assignment("billing.input", {0, 3, 4, 5}, 4)
    with pytest.raises(PartitionMismatch, match="configured for 4"):
        PlacementCheck(4).check([Message(4, 0, None, b"{}")])
    # Faust's assignor keeps to the old partitions: the topic's count in the consumer's metadata says it
    check_assignment("billing.input", {0, 1, 2, 3}, 4, topic_count=4)
    with pytest.raises(PartitionMismatch, match=r"partition\(s\) \[4, 5\] exist"):
        check_assignment("billing.input", {0, 1, 2, 3}, 4, topic_count=6)


def test_kafka_python_kwargs_for_each_protocol() -> None:
    assert kafka_security.kafka_python_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}
    scram = Settings(
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="billing",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile="/etc/ca.pem",
    )
    assert kafka_security.kafka_python_kwargs(scram) == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/etc/ca.pem",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "billing",
        "sasl_plain_password": "s3cret",
    }
    assert kafka_security.kafka_python_kwargs(Settings(kafka_security_protocol="SSL")) == {"security_protocol": "SSL"}


@pytest.mark.parametrize(
    "settings, message",
    [
        (Settings(kafka_security_protocol="TLS"), "is not one of"),
        (Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN"), "needs BILLING_KAFKA_SASL_USERNAME"),
        (Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="p"), "MECHANISM must be one of"),
        (Settings(kafka_sasl_mechanism="PLAIN"), "needs a SASL_"),
        (Settings(kafka_ssl_cafile="/ca.pem"), "needs BILLING_KAFKA_SECURITY_PROTOCOL=SSL"),
    ],
)
def test_security_settings_that_cannot_work_are_refused(settings: Settings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kafka_security.kafka_python_kwargs(settings)


def test_faust_gets_credentials_and_the_configured_timeouts() -> None:
    import faust

    assert kafka_security.faust_credentials(Settings()) is None
    creds = kafka_security.faust_credentials(
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="u", kafka_sasl_password="p")
    )
    assert isinstance(creds, faust.SASLCredentials) and creds.mechanism.value == "SCRAM-SHA-256"
    assert creds.protocol.value == "SASL_SSL" and isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED and creds.ssl_context.check_hostname
    prod = kafka_security.faust_settings(
        Settings(kafka_session_timeout_s=45, kafka_heartbeat_s=3, kafka_rebalance_timeout_s=60, kafka_request_timeout_s=30)
    )
    assert (prod["broker_session_timeout"], prod["broker_heartbeat_interval"], prod["broker_rebalance_timeout"]) == (45, 3, 60)
    assert prod["producer_request_timeout"] == 30 and prod["producer_acks"] == -1
    assert prod["broker_request_timeout"] == 65  # outlasts a JoinGroup that takes the whole rebalance timeout
    assert kafka_security.faust_settings(Settings(create_topics=False))["topic_allow_declare"] is False
    embedded = kafka_security.faust_settings(Settings())
    assert (embedded["broker_session_timeout"], embedded["broker_heartbeat_interval"]) == (6, 1)  # Tansu: 3 s joins


def test_weaker_topics_are_named() -> None:
    settings = Settings(topic_replication=3, topic_min_insync=2)
    want = topics.specs(settings)["billing.input"]
    good = {"min.insync.replicas": "2", "unclean.leader.election.enable": "false", "retention.ms": "-1", "retention.bytes": "-1"}
    assert topics.weaker("billing.input", want, good, 3, settings) == []
    problems = topics.weaker(
        "billing.input",
        want,
        {**good, "min.insync.replicas": "1", "retention.ms": "604800000", "unclean.leader.election.enable": "true"},
        1,
        settings,
    )
    assert problems == [
        "billing.input: replication factor 1, need 3",
        "billing.input: retention.ms=604800000, need -1 (kept forever)",
        "billing.input: min.insync.replicas=1, need >= 2",
        "billing.input: unclean.leader.election.enable=true, need false",
    ]
    # a broker that reports no configs (Tansu) is not taken as durable
    assert len(topics.weaker("billing.input", want, {}, 3, settings)) == 4


def test_outputs_are_resent_in_order_from_the_first_one_not_acknowledged() -> None:
    delivered: list[str] = []
    attempts: dict[str, int] = {}

    async def send(message: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        attempts[message] = attempts.get(message, 0) + 1
        if message == "c" and attempts[message] == 1:
            future.set_exception(ConnectionError("broker away"))
        else:
            delivered.append(message)
            future.set_result(None)
        return future

    async def no_sleep(_: float) -> None:
        return None

    failures = asyncio.run(delivery.deliver(["a", "b", "c", "d", "e"], send, sleep=no_sleep))
    assert failures == 1
    # d and e landed after the lost c: they go again after c, so the last copies are in order
    assert delivered == ["a", "b", "d", "e", "c", "d", "e"]


def test_cluster_client_options_and_tls() -> None:
    plain = Settings()
    assert chcluster.client_options(plain, "http://u:p@h:8123/billing") == {}
    assert chcluster.client_options(Settings(clickhouse_cluster=True), "chdb:///x") == {}
    tls = chcluster.client_options(Settings(clickhouse_cluster=True, clickhouse_ca_file="/ca.pem"), "https://u:p@h:8443/billing")
    assert tls == {"verify": True, "ca_cert": "/ca.pem", "settings": chcluster.CLUSTER_SETTINGS}
    assert chcluster.CLUSTER_SETTINGS["insert_quorum_parallel"] == 0 and chcluster.CLUSTER_SETTINGS["insert_distributed_sync"] == 1


def test_the_idempotent_producer_setting_reaches_faust_s_aiokafka_producer() -> None:
    import faust

    app = faust.App("billing-idempotence-test", broker="kafka://127.0.0.1:9", autodiscover=False)
    assert "enable_idempotence" not in app.producer._settings_extra()  # Faust sets it only inside transactions
    kafka_security.make_idempotent(app)
    extra = app.producer._settings_extra()
    assert extra["enable_idempotence"] is True and extra["acks"] == "all"


def test_an_operator_can_set_a_misplaced_message_aside_and_only_that_one() -> None:
    """BILLING_SET_ASIDE names messages by partition and offset, as the stop names them: a misplaced
    one there is handed back to be refused; one misplaced elsewhere still stops; a correctly placed
    message at a named position is not touched (an entry left behind cannot refuse good records)."""
    home = partition_for(b"acct-1", 4)
    wrong = (home + 1) % 4
    check = PlacementCheck(4, frozenset({(wrong, 3), (home, 5)}))
    assert check.check([Message(wrong, 3, b"acct-1", b"{}"), Message(home, 5, b"acct-1", b"{}")]) == {(wrong, 3): home}
    with pytest.raises(PartitionMismatch, match=r"offset 4: .*BILLING_SET_ASIDE=" + str(wrong) + ":4"):
        check.check([Message(wrong, 3, b"acct-1", b"{}"), Message(wrong, 4, b"acct-1", b"{}")])


def test_set_aside_positions_are_read_and_checked(monkeypatch) -> None:
    from pipeline.settings import SettingsError, load_settings

    monkeypatch.setenv("BILLING_SET_ASIDE", " 2:18211, 3:907 ")
    assert load_settings().set_aside == {(2, 18211), (3, 907)}
    monkeypatch.setenv("BILLING_SET_ASIDE", "2-18211")
    with pytest.raises(SettingsError, match="BILLING_SET_ASIDE='2-18211' is not valid: expected partition:offset pairs"):
        load_settings()
