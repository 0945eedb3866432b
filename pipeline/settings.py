"""One settings object, read from flags, then env, then defaults (CONTRACT.md, Configuration)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
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
    log_epoch: str = "auto"  # auto: the topic's cluster id and topic id (pipeline/stream/logidentity.py); `billing up` sets its own
    batch_size: int = 1000  # messages per batch (a message holds up to 200 records)
    # records folded and written to ClickHouse as one unit, and the size of a raw batch (bounds memory):
    # 25,000 kept gw_1m under 1.5 GiB at the same speed (docs/performance.md, "Settings this touches")
    write_records: int = 25_000
    batch_within_s: float = 0.2
    auto_tick: bool = True  # settle idle accounts as their partition's event time moves on
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0: a free port
    api_token: str | None = None  # required beyond loopback: every data endpoint then asks for it
    control_key: str | None = None  # signs control records; None: <data_dir>/control.key (made by `billing up`)
    max_future_s: int = 3600  # a record further ahead of the wall clock moves only its own account's clock
    max_jump_s: int = 86_400  # ... and one further ahead of its own account's history (or the partition's)
    # account states kept in a worker's memory, least recently used leaving first: about 3.6 KiB each;
    # fewer than the accounts active within a minute puts their records on the cold path (slower, later)
    max_cached_accounts: int = 100_000
    # a unit's inserts of one commit step side by side on this many clients (sink.InsertLanes); 1: one after
    # another. Measured no faster end to end with the embedded engine on 2 cores (docs/performance-log.md, session 15)
    insert_lanes: int = 1
    # a unit's reads on a ClickHouse client of their own, beside the write of the unit before where nothing
    # they read can be in it (processor._reads_beside): otherwise the reads wait for that write, and the
    # engine and the folding thread take turns (bench.gateway_processor --timeline). The engine then holds
    # a read's and an insert's memory at once, which its allocator's shorter decay pays for
    # (store/chclient.ENGINE_ALLOCATOR; docs/performance.md, session 18). 0: one client, reads after writes
    reads_beside_writes: bool = True
    # a starting worker fills its account cache with the snapshots written most recently while it
    # joins its group, instead of loading each account on its first batch (BatchProcessor.warm)
    warm_start: bool = True
    log_format: str = "text"  # text | json (one JSON object per line, for log collectors)
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
    # input messages (partition, offset) an operator set aside: each, if it is on a partition its key does
    # not map to, is rejected and kept instead of stopping the worker (partitioning.PlacementCheck)
    set_aside: frozenset[tuple[int, int]] = frozenset()

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

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


DEFAULTS = Settings()  # each default is written once, in the class above; load_settings falls back to these


class SettingsError(ValueError):
    """A setting with a value the pipeline cannot use: the CLI exits 2 with this one line, which
    names the setting and the values it accepts."""


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
CLICKHOUSE_SCHEMES = ("chdb", "http", "https")
LOG_FORMATS = ("text", "json")
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def _bad(name: str, value: str, accepted: str) -> SettingsError:
    return SettingsError(f"{name}={value!r} is not valid: expected {accepted}")


def _int(name: str, value: str | None, default: int, low: int, high: int | None = None) -> int:
    """An integer setting within [low, high]."""
    if value is None or value.strip() == "":
        return default
    accepted = f"a whole number from {low}" + (f" to {high}" if high is not None else " up")
    try:
        number = int(value.strip())
    except ValueError:
        raise _bad(name, value, accepted) from None
    if number < low or (high is not None and number > high):
        raise _bad(name, value, accepted)
    return number


def _positions(name: str, value: str | None) -> frozenset[tuple[int, int]]:
    """`P:O[,P:O...]`: input messages by partition and offset (the worker names them when it stops)."""
    if value is None or value.strip() == "":
        return frozenset()
    found = re.fullmatch(r"\s*\d+:\d+\s*(,\s*\d+:\d+\s*)*", value)
    if found is None:
        raise _bad(name, value, "partition:offset pairs separated by commas, e.g. 2:18211,3:907")
    return frozenset((int(p), int(o)) for p, o in (pair.strip().split(":") for pair in value.split(",")))


def _bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise _bad(name, value, "one of " + ", ".join(TRUE_WORDS + FALSE_WORDS))


def _choice(name: str, value: str | None, default: str, choices: tuple[str, ...]) -> str:
    if value is None or value.strip() == "":
        return default
    if value.strip().lower() not in choices:
        raise _bad(name, value, "one of " + ", ".join(choices))
    return value.strip().lower()


def _clickhouse(name: str, value: str | None) -> str | None:
    """chdb://PATH (embedded) or http(s)://[user:password@]host[:port][/database]."""
    if not value:
        return None
    accepted = "chdb://PATH or http(s)://[user:password@]host[:port][/database]"
    parts = urlsplit(value)
    if parts.scheme not in CLICKHOUSE_SCHEMES:
        raise _bad(name, redact(value), accepted)
    if parts.scheme == "chdb" and not (parts.netloc + parts.path):
        raise _bad(name, redact(value), accepted)
    if parts.scheme != "chdb" and not parts.hostname:
        raise _bad(name, redact(value), accepted)
    return value


def _kafka(name: str, value: str | None) -> str | None:
    """Bootstrap servers: host[:port][,host[:port]...]."""
    if not value:
        return None
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":") if ":" in server else (server.strip(), "", "")
        if not host or "/" in host or " " in host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise _bad(name, value, "host:port[,host:port...] (no scheme)")
    return value


def _name(name: str, value: str | None, default: str, pattern: re.Pattern[str] | None = None) -> str:
    if value is None:
        return default
    if not value.strip() or (pattern is not None and not pattern.fullmatch(value)):
        raise _bad(name, value, "letters, digits, '.', '_' or '-'" if pattern is not None else "a non-empty name")
    return value


def _control_key(value: str | None) -> str | None:
    if value is not None and len(value) < 32:
        raise _bad("BILLING_CONTROL_KEY", "(hidden)", "at least 32 random characters (e.g. `openssl rand -hex 32`)")
    return value


def load_settings(kafka: str | None = None, clickhouse: str | None = None, data_dir: str | None = None) -> Settings:
    """Flags win over env vars, env vars over defaults. Every value is checked here, in one place:
    a bad one raises SettingsError (the CLI: exit 2, one line naming the setting)."""
    env = os.environ
    catalog = env.get("BILLING_CATALOG")
    settings = Settings(
        data_dir=Path(data_dir or env.get("BILLING_DATA_DIR") or DEFAULTS.data_dir),
        kafka=_kafka("--kafka" if kafka else "BILLING_KAFKA", kafka or env.get("BILLING_KAFKA") or None),
        clickhouse=_clickhouse("--clickhouse" if clickhouse else "BILLING_CLICKHOUSE", clickhouse or env.get("BILLING_CLICKHOUSE") or None),
        catalog=Path(catalog) if catalog else None,
        topic_prefix=_name("BILLING_TOPIC_PREFIX", env.get("BILLING_TOPIC_PREFIX"), DEFAULTS.topic_prefix, _TOPIC_CHARS),
        partitions=_int("BILLING_PARTITIONS", env.get("BILLING_PARTITIONS"), DEFAULTS.partitions, 1, 10_000),
        app_id=_name("BILLING_APP_ID", env.get("BILLING_APP_ID"), DEFAULTS.app_id, _TOPIC_CHARS),
        log_epoch=_name("BILLING_LOG_EPOCH", env.get("BILLING_LOG_EPOCH"), DEFAULTS.log_epoch),
        batch_size=_int("BILLING_BATCH_SIZE", env.get("BILLING_BATCH_SIZE"), DEFAULTS.batch_size, 1),
        write_records=_int("BILLING_WRITE_RECORDS", env.get("BILLING_WRITE_RECORDS"), DEFAULTS.write_records, 1),
        api_host=env.get("BILLING_API_HOST") or DEFAULTS.api_host,
        api_token=env.get("BILLING_API_TOKEN") or None,
        control_key=_control_key(env.get("BILLING_CONTROL_KEY") or None),
        max_future_s=_int("BILLING_MAX_FUTURE_S", env.get("BILLING_MAX_FUTURE_S"), DEFAULTS.max_future_s, 0),
        max_jump_s=_int("BILLING_MAX_JUMP_S", env.get("BILLING_MAX_JUMP_S"), DEFAULTS.max_jump_s, 0),
        max_cached_accounts=_int("BILLING_MAX_CACHED_ACCOUNTS", env.get("BILLING_MAX_CACHED_ACCOUNTS"), DEFAULTS.max_cached_accounts, 1),
        insert_lanes=_int("BILLING_INSERT_LANES", env.get("BILLING_INSERT_LANES"), DEFAULTS.insert_lanes, 1, 16),
        api_port=_int("BILLING_API_PORT", env.get("BILLING_API_PORT"), DEFAULTS.api_port, 0, 65_535),
        auto_tick=_bool("BILLING_AUTO_TICK", env.get("BILLING_AUTO_TICK"), DEFAULTS.auto_tick),
        reads_beside_writes=_bool("BILLING_READS_BESIDE_WRITES", env.get("BILLING_READS_BESIDE_WRITES"), DEFAULTS.reads_beside_writes),
        warm_start=_bool("BILLING_WARM_START", env.get("BILLING_WARM_START"), DEFAULTS.warm_start),
        log_format=_choice("BILLING_LOG_FORMAT", env.get("BILLING_LOG_FORMAT"), DEFAULTS.log_format, LOG_FORMATS),
        create_topics=_bool("BILLING_CREATE_TOPICS", env.get("BILLING_CREATE_TOPICS"), DEFAULTS.create_topics),
        topic_replication=_int("BILLING_TOPIC_REPLICATION", env.get("BILLING_TOPIC_REPLICATION"), DEFAULTS.topic_replication, 0, 100),
        topic_min_insync=_int("BILLING_TOPIC_MIN_INSYNC", env.get("BILLING_TOPIC_MIN_INSYNC"), DEFAULTS.topic_min_insync, 0, 100),
        migrate_on_start=_bool("BILLING_MIGRATE_ON_START", env.get("BILLING_MIGRATE_ON_START"), DEFAULTS.migrate_on_start),
        clickhouse_cluster=_bool("BILLING_CLICKHOUSE_CLUSTER", env.get("BILLING_CLICKHOUSE_CLUSTER"), DEFAULTS.clickhouse_cluster),
        clickhouse_ca_file=env.get("BILLING_CLICKHOUSE_CA_FILE") or None,
        clickhouse_verify=_bool("BILLING_CLICKHOUSE_VERIFY", env.get("BILLING_CLICKHOUSE_VERIFY"), DEFAULTS.clickhouse_verify),
        kafka_security_protocol=_choice(
            "BILLING_KAFKA_SECURITY_PROTOCOL",
            env.get("BILLING_KAFKA_SECURITY_PROTOCOL"),
            DEFAULTS.kafka_security_protocol,
            ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        ),
        kafka_sasl_mechanism=env.get("BILLING_KAFKA_SASL_MECHANISM") or None,
        kafka_sasl_username=env.get("BILLING_KAFKA_SASL_USERNAME") or None,
        kafka_sasl_password=env.get("BILLING_KAFKA_SASL_PASSWORD"),
        kafka_ssl_cafile=env.get("BILLING_KAFKA_SSL_CAFILE") or None,
        kafka_session_timeout_s=_int(
            "BILLING_KAFKA_SESSION_TIMEOUT_S", env.get("BILLING_KAFKA_SESSION_TIMEOUT_S"), DEFAULTS.kafka_session_timeout_s, 1
        ),
        kafka_heartbeat_s=_int("BILLING_KAFKA_HEARTBEAT_S", env.get("BILLING_KAFKA_HEARTBEAT_S"), DEFAULTS.kafka_heartbeat_s, 1),
        kafka_rebalance_timeout_s=_int(
            "BILLING_KAFKA_REBALANCE_TIMEOUT_S", env.get("BILLING_KAFKA_REBALANCE_TIMEOUT_S"), DEFAULTS.kafka_rebalance_timeout_s, 1
        ),
        kafka_request_timeout_s=_int(
            "BILLING_KAFKA_REQUEST_TIMEOUT_S", env.get("BILLING_KAFKA_REQUEST_TIMEOUT_S"), DEFAULTS.kafka_request_timeout_s, 1
        ),
        input_topic_name=env.get("BILLING_INPUT_TOPIC") or None,
        kafka_idempotent=_bool("BILLING_KAFKA_IDEMPOTENT", env.get("BILLING_KAFKA_IDEMPOTENT"), DEFAULTS.kafka_idempotent),
        set_aside=_positions("BILLING_SET_ASIDE", env.get("BILLING_SET_ASIDE")),
    )
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        name = "--data-dir" if data_dir else "BILLING_DATA_DIR"
        raise _bad(name, str(settings.data_dir), "a directory (this is a file)")
    return settings


def redact(url: str) -> str:
    """A URL fit for logs and error messages: the password is never shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
