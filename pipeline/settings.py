"""One settings object, read from flags, then env, then defaults (CONTRACT.md, Configuration)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".billing")
    kafka: str | None = None  # None: the embedded broker of `billing up` (found via the data dir)
    clickhouse: str | None = None  # None: chdb://<data_dir>/clickhouse
    catalog: Path | None = None  # None: schemas/catalog.json
    topic_prefix: str = "billing"
    partitions: int = 4
    app_id: str = "billing-worker"
    log_epoch: str = "auto"  # auto: the topic's cluster id and topic id (pipeline/logidentity.py); `billing up` sets its own
    batch_size: int = 1000  # messages per batch (a message holds up to 200 records)
    write_records: int = 50_000  # records folded and written to ClickHouse as one unit (bounds memory)
    batch_within_s: float = 0.2
    auto_tick: bool = True  # settle idle accounts as their partition's event time moves on
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0: a free port
    extra: dict[str, str] = field(default_factory=dict)
    # a real cluster (issue 21; docs/cluster-operations.md). Defaults suit the embedded `billing up`;
    # deploy/ sets the production values.
    create_topics: bool = True  # False: topics come from the topics step; a worker only checks them
    topic_replication: int = 0  # 0: the broker's default, unchecked; >0: created with it and required
    topic_min_insync: int = 0  # 0: unchecked; >0: min.insync.replicas set and required
    migrate_on_start: bool = True  # False: a worker only verifies the schema version (`billing migrate` applies it)
    clickhouse_cluster: bool = False  # sharded/replicated ClickHouse: cluster DDL, quorum and synchronous inserts
    clickhouse_ca_file: str | None = None  # CA bundle for an https:// ClickHouse URL
    clickhouse_verify: bool = True  # verify the ClickHouse server's certificate
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_session_timeout_s: int = 6  # Tansu holds a JoinGroup for half of it (DESIGN §7); 45 in deploy/
    kafka_heartbeat_s: int = 1
    kafka_rebalance_timeout_s: int = 6
    kafka_request_timeout_s: int = 30  # producer delivery and admin requests (Faust's default is 1200 s)
    kafka_idempotent: bool = False  # Tansu does not answer InitProducerId; on in deploy/
    input_topic_name: str | None = None  # None: <prefix>.input; a grown topic after a drained switch-over

    @property
    def clickhouse_url(self) -> str:
        return self.clickhouse or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def input_topic(self) -> str:
        return self.input_topic_name or f"{self.topic_prefix}.input"

    @property
    def violations_topic(self) -> str:
        return f"{self.topic_prefix}.rate-violations"

    @property
    def status_topic(self) -> str:
        """Compacted, keyed by account: the latest status is what an API gateway reads."""
        return f"{self.topic_prefix}.account-status"

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"billing: {name}={value!r} is not an integer") from None


def load_settings(kafka: str | None = None, clickhouse: str | None = None, data_dir: str | None = None) -> Settings:
    """Flags win over env vars, env vars over defaults."""
    env = os.environ
    catalog = env.get("BILLING_CATALOG")
    return Settings(
        data_dir=Path(data_dir or env.get("BILLING_DATA_DIR") or ".billing"),
        kafka=kafka or env.get("BILLING_KAFKA") or None,
        clickhouse=clickhouse or env.get("BILLING_CLICKHOUSE") or None,
        catalog=Path(catalog) if catalog else None,
        topic_prefix=env.get("BILLING_TOPIC_PREFIX", "billing"),
        partitions=_env_int("BILLING_PARTITIONS", 4),
        app_id=env.get("BILLING_APP_ID", "billing-worker"),
        log_epoch=env.get("BILLING_LOG_EPOCH") or "auto",
        batch_size=_env_int("BILLING_BATCH_SIZE", 1000),
        write_records=_env_int("BILLING_WRITE_RECORDS", 50_000),
        api_host=env.get("BILLING_API_HOST") or "127.0.0.1",
        api_port=_env_int("BILLING_API_PORT", 0),
        auto_tick=env.get("BILLING_AUTO_TICK", "1").lower() not in ("0", "false", "no", "off"),
        create_topics=env.get("BILLING_CREATE_TOPICS", "1").lower() not in ("0", "false", "no", "off"),
        topic_replication=_env_int("BILLING_TOPIC_REPLICATION", 0),
        topic_min_insync=_env_int("BILLING_TOPIC_MIN_INSYNC", 0),
        migrate_on_start=env.get("BILLING_MIGRATE_ON_START", "1").lower() not in ("0", "false", "no", "off"),
        clickhouse_cluster=env.get("BILLING_CLICKHOUSE_CLUSTER", "0").lower() in ("1", "true", "yes", "on"),
        clickhouse_ca_file=env.get("BILLING_CLICKHOUSE_CA_FILE") or None,
        clickhouse_verify=env.get("BILLING_CLICKHOUSE_VERIFY", "1").lower() not in ("0", "false", "no", "off"),
        kafka_security_protocol=env.get("BILLING_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
        kafka_sasl_mechanism=env.get("BILLING_KAFKA_SASL_MECHANISM") or None,
        kafka_sasl_username=env.get("BILLING_KAFKA_SASL_USERNAME") or None,
        kafka_sasl_password=env.get("BILLING_KAFKA_SASL_PASSWORD"),
        kafka_ssl_cafile=env.get("BILLING_KAFKA_SSL_CAFILE") or None,
        kafka_session_timeout_s=_env_int("BILLING_KAFKA_SESSION_TIMEOUT_S", 6),
        kafka_heartbeat_s=_env_int("BILLING_KAFKA_HEARTBEAT_S", 1),
        kafka_rebalance_timeout_s=_env_int("BILLING_KAFKA_REBALANCE_TIMEOUT_S", 6),
        kafka_request_timeout_s=_env_int("BILLING_KAFKA_REQUEST_TIMEOUT_S", 30),
        input_topic_name=env.get("BILLING_INPUT_TOPIC") or None,
        kafka_idempotent=env.get("BILLING_KAFKA_IDEMPOTENT", "0").lower() in ("1", "true", "yes", "on"),
    )


def redact(url: str) -> str:
    """A URL fit for logs and error messages: the password is never shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
