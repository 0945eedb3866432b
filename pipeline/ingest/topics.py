"""The topics the product uses, with the configs that make them replayable or compacted (DESIGN §2),
and on a real cluster durable: replicated, `min.insync.replicas`, no unclean leader election.

The input topic is the billing source of truth, kept forever. In production the topics step
(deploy/k8s/create-topics.sh) creates them; workers run with BILLING_CREATE_TOPICS=0 and only
check them, so that a worker started before the step (Kubernetes does not order a Job before a
Deployment) never creates a topic with the broker's defaults. With BILLING_TOPIC_REPLICATION and
BILLING_TOPIC_MIN_INSYNC set, an existing topic that is weaker stops the worker (and the step).
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

from pipeline.ingest.broker import BrokerError, ensure_topics
from pipeline.settings import Settings

# Input: replayable forever and stamped by the broker, so that a back-dated record is never
# deleted on arrival by time-based retention.
INPUT_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "message.timestamp.type": "LogAppendTime"}
STATUS_CONFIG = {"cleanup.policy": "compact"}
VIOLATIONS_CONFIG = {"retention.ms": str(7 * 24 * 3600 * 1000)}


class WeakTopic(BrokerError):
    """A topic exists but is less durable (or otherwise different) than the settings require."""


def specs(settings: Settings) -> dict[str, dict[str, str]]:
    """Each topic's configs, with the durability ones when the settings ask for them."""
    durable: dict[str, str] = {}
    if settings.topic_min_insync > 0:
        durable = {"min.insync.replicas": str(settings.topic_min_insync), "unclean.leader.election.enable": "false"}
    return {
        settings.input_topic: {**INPUT_CONFIG, **durable},
        settings.status_topic: {**STATUS_CONFIG, **durable},
        settings.violations_topic: {**VIOLATIONS_CONFIG, **durable},
    }


def ensure_all(settings: Settings, bootstrap: str) -> list[str]:
    """Create every topic if missing (same partition count for all: they are keyed by account),
    or with BILLING_CREATE_TOPICS=0 only check that they exist; then verify them."""
    from pipeline.ingest.kafka_security import kafka_python_kwargs

    wanted = specs(settings)
    kwargs = kafka_python_kwargs(settings)
    if settings.create_topics:
        # the output topics keep the count they were created with (a grown input topic is a new
        # topic, docs/cluster-operations.md): only a missing one is created, with the input's count
        missing = set(wanted) - _existing(bootstrap, kwargs) | {settings.input_topic}
        ensure_topics(
            bootstrap,
            {name: settings.partitions for name in wanted if name in missing},
            {name: wanted[name] for name in missing},
            replication=settings.topic_replication or -1,
            admin_kwargs=kwargs,
        )
    verify(settings, bootstrap, wanted, kwargs)
    return list(wanted)


def _existing(bootstrap: str, admin_kwargs: Mapping[str, Any]) -> set[str]:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="billing-list-topics", **admin_kwargs)
    except Exception as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        return set(admin.list_topics())
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def weaker(name: str, required: Mapping[str, str], actual: Mapping[str, str], replicas: int, settings: Settings) -> list[str]:
    """What about topic `name` is weaker than required (pure: tested without a broker)."""
    problems = []
    if settings.topic_replication > 0 and replicas < settings.topic_replication:
        problems.append(f"{name}: replication factor {replicas}, need {settings.topic_replication}")
    for key, want in required.items():
        have = actual.get(key)
        if key == "min.insync.replicas":
            if have is None or not have.isdigit() or int(have) < int(want):
                problems.append(f"{name}: min.insync.replicas={have if have is not None else 'unknown'}, need >= {want}")
        elif key in ("retention.ms", "retention.bytes") and want == "-1":
            if have != "-1":
                problems.append(f"{name}: {key}={have if have is not None else 'unknown'}, need -1 (kept forever)")
        elif key == "unclean.leader.election.enable":
            if (have or "").lower() != "false":
                problems.append(f"{name}: unclean.leader.election.enable={have if have is not None else 'unknown'}, need false")
    return problems


def verify(
    settings: Settings, bootstrap: str, wanted: Mapping[str, Mapping[str, str]] | None = None, admin_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Every topic exists with the configured partition count; with durability required, replicated
    enough and configured at least as strongly. Raises WeakTopic naming every problem."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    wanted = wanted or specs(settings)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="billing-verify-topics", **(admin_kwargs or {}))
    except Exception as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(wanted)) if not t.get("error_code")}
        problems = [
            f"{name}: does not exist (run the topics step: deploy/k8s/create-topics.sh)" for name in wanted if name not in described
        ]
        topic = described.get(settings.input_topic)
        if topic is not None and len(topic.get("partitions") or []) != settings.partitions:
            problems.append(
                f"{settings.input_topic}: has {len(topic.get('partitions') or [])} partitions, expected "
                f"{settings.partitions} (BILLING_PARTITIONS); never add partitions to it: grow with a new topic "
                "(docs/cluster-operations.md)"
            )
        durable = settings.topic_replication > 0 or settings.topic_min_insync > 0
        if durable and described:
            configs = _configs(admin, ConfigResource, ConfigResourceType, list(described))
            for name, topic in described.items():
                replicas = min((len(p.get("replicas") or p.get("replica_nodes") or []) for p in topic.get("partitions") or []), default=0)
                problems += weaker(name, wanted[name], configs.get(name, {}), replicas, settings)
        if problems:
            raise WeakTopic("topics are missing or weaker than required: " + "; ".join(problems))
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def _configs(admin: Any, resource: Any, kind: Any, names: list[str]) -> dict[str, dict[str, str]]:
    """{topic: {key: value}} from DescribeConfigs (every config, defaults included)."""
    answer = admin.describe_configs([resource(kind.TOPIC, name) for name in names], config_filter="all")
    found: dict[str, dict[str, str]] = {}
    if isinstance(answer, dict):
        for by_name in answer.values():
            for name, entries in (by_name or {}).items():
                values = found.setdefault(str(name), {})
                for key, data in (entries or {}).items():
                    value = data.get("value") if isinstance(data, dict) else data
                    values[str(key)] = "" if value is None else str(value)
    return found
