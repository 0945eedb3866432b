"""Issue 21, offline: the production settings of deploy/ that make billing right on a real Kafka
and ClickHouse cluster, each read back through pipeline/settings.py."""

from __future__ import annotations

import pytest

from tests.deploy.test_deploy_files import K8S, compose, compose_env, configmap_data, container_env, k8s_docs, k8s_resources, one, pod_spec


def loaded(env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    import os

    from pipeline.settings import load_settings

    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_k8s_workers_run_with_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_resources()
    (container,) = pod_spec(one(docs, "Deployment", "billing-worker"))["containers"]
    env = {k: v for k, v in container_env(container, docs).items() if k != "BILLING_CLICKHOUSE"}
    s = loaded(env, monkeypatch)
    assert s.partitions >= 12, "sized for growth: the partition count caps the number of workers"
    assert (s.topic_replication, s.topic_min_insync) == (3, 2)
    assert not s.create_topics and not s.migrate_on_start
    assert s.kafka_session_timeout_s >= 30 and s.kafka_heartbeat_s * 3 <= s.kafka_session_timeout_s
    assert s.kafka_rebalance_timeout_s >= s.kafka_session_timeout_s and s.kafka_request_timeout_s <= 60
    assert s.kafka_idempotent
    assert s.log_epoch == "auto", "the epoch follows the topic identity unless pinned on purpose"
    sasl = next(e for e in container["env"] if e["name"] == "BILLING_KAFKA_SASL_PASSWORD")
    assert sasl["valueFrom"]["secretKeyRef"] == {"name": "billing-kafka", "key": "BILLING_KAFKA_SASL_PASSWORD", "optional": True}


def test_k8s_topics_job_creates_durable_topics_from_the_workers_settings() -> None:
    docs = k8s_resources()
    (container,) = pod_spec(one(docs, "Job", "billing-topics"))["containers"]
    env = container_env(container, docs)
    config = configmap_data(docs, "billing-config")
    assert env["TOPIC_REPLICATION_FACTOR"] == config["BILLING_TOPIC_REPLICATION"] == "3"
    assert env["TOPIC_MIN_INSYNC_REPLICAS"] == config["BILLING_TOPIC_MIN_INSYNC"] == "2"
    script = (K8S / "create-topics.sh").read_text(encoding="utf-8")
    assert 'durable="min.insync.replicas=$min_insync,unclean.leader.election.enable=false"' in script
    assert 'ensure_topic "$input" "retention.ms=-1,retention.bytes=-1,' in script  # the source of truth, kept forever


def test_k8s_migrations_run_as_a_separate_ddl_user() -> None:
    docs = k8s_resources()
    (migrate,) = pod_spec(one(docs, "Job", "billing-migrate"))["containers"]
    (worker,) = pod_spec(one(docs, "Deployment", "billing-worker"))["containers"]

    def clickhouse_secret(container: dict) -> str:
        return next(e for e in container["env"] if e["name"] == "BILLING_CLICKHOUSE")["valueFrom"]["secretKeyRef"]["name"]

    assert clickhouse_secret(migrate) == "billing-clickhouse-ddl" != clickhouse_secret(worker) == "billing-clickhouse"
    assert migrate.get("args") == ["migrate"]
    templates = {doc["metadata"]["name"] for doc in k8s_docs(K8S / "secret.example.yaml")}
    assert {"billing-clickhouse", "billing-clickhouse-ddl"} <= templates


def test_compose_workers_only_check_topics_and_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    env = {k: v for k, v in compose_env(services["worker"]).items() if k != "BILLING_CLICKHOUSE"}
    s = loaded(env, monkeypatch)
    assert not s.create_topics and not s.migrate_on_start and s.kafka_idempotent
    assert s.kafka_session_timeout_s >= 30
    init = compose_env(services["kafka-init"])
    assert (init["TOPIC_REPLICATION_FACTOR"], init["TOPIC_MIN_INSYNC_REPLICAS"]) == ("1", "1")  # one Kafka node
    assert (s.topic_replication, s.topic_min_insync) == (1, 1) and init["TOPIC_PARTITIONS"] == str(s.partitions)
