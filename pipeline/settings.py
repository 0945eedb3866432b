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
    log_epoch: str = "kafka"  # a durable Kafka log keeps its offsets; `billing up` sets its own
    batch_size: int = 1000  # messages per batch (a message holds up to 200 records)
    write_records: int = 50_000  # records folded and written to ClickHouse as one unit (bounds memory)
    batch_within_s: float = 0.2
    state_cache: int = 100_000  # account states kept in memory between batches (processor._evict): about 3 KB each
    auto_tick: bool = True  # settle idle accounts as their partition's event time moves on
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0: a free port
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def clickhouse_url(self) -> str:
        return self.clickhouse or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def input_topic(self) -> str:
        return f"{self.topic_prefix}.input"

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
        log_epoch=env.get("BILLING_LOG_EPOCH", "kafka"),
        batch_size=_env_int("BILLING_BATCH_SIZE", 1000),
        write_records=_env_int("BILLING_WRITE_RECORDS", 50_000),
        state_cache=_env_int("BILLING_STATE_CACHE", 100_000),
        api_host=env.get("BILLING_API_HOST") or "127.0.0.1",
        api_port=_env_int("BILLING_API_PORT", 0),
        auto_tick=env.get("BILLING_AUTO_TICK", "1").lower() not in ("0", "false", "no", "off"),
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
