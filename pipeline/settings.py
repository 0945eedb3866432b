"""One settings object, read from flags, then env, then defaults (CONTRACT.md, Configuration)."""

from __future__ import annotations

import os
import re
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
    auto_tick: bool = True  # settle idle accounts as their partition's event time moves on
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0: a free port
    api_token: str | None = None  # required beyond loopback: every data endpoint then asks for it
    control_key: str | None = None  # signs control records; None: <data_dir>/control.key (made by `billing up`)
    max_future_s: int = 3600  # a record further ahead of the wall clock moves only its own account's clock
    max_jump_s: int = 86_400  # ... and one further ahead of its own account's history (or the partition's)
    max_cached_accounts: int = 100_000  # account states kept in a worker's memory between batches
    log_format: str = "text"  # text | json (one JSON object per line, for log collectors)
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
        data_dir=Path(data_dir or env.get("BILLING_DATA_DIR") or ".billing"),
        kafka=_kafka("--kafka" if kafka else "BILLING_KAFKA", kafka or env.get("BILLING_KAFKA") or None),
        clickhouse=_clickhouse("--clickhouse" if clickhouse else "BILLING_CLICKHOUSE", clickhouse or env.get("BILLING_CLICKHOUSE") or None),
        catalog=Path(catalog) if catalog else None,
        topic_prefix=_name("BILLING_TOPIC_PREFIX", env.get("BILLING_TOPIC_PREFIX"), "billing", _TOPIC_CHARS),
        partitions=_int("BILLING_PARTITIONS", env.get("BILLING_PARTITIONS"), 4, 1, 10_000),
        app_id=_name("BILLING_APP_ID", env.get("BILLING_APP_ID"), "billing-worker", _TOPIC_CHARS),
        log_epoch=_name("BILLING_LOG_EPOCH", env.get("BILLING_LOG_EPOCH"), "kafka"),
        batch_size=_int("BILLING_BATCH_SIZE", env.get("BILLING_BATCH_SIZE"), 1000, 1),
        write_records=_int("BILLING_WRITE_RECORDS", env.get("BILLING_WRITE_RECORDS"), 50_000, 1),
        api_host=env.get("BILLING_API_HOST") or "127.0.0.1",
        api_token=env.get("BILLING_API_TOKEN") or None,
        control_key=_control_key(env.get("BILLING_CONTROL_KEY") or None),
        max_future_s=_int("BILLING_MAX_FUTURE_S", env.get("BILLING_MAX_FUTURE_S"), 3600, 0),
        max_jump_s=_int("BILLING_MAX_JUMP_S", env.get("BILLING_MAX_JUMP_S"), 86_400, 0),
        max_cached_accounts=_int("BILLING_MAX_CACHED_ACCOUNTS", env.get("BILLING_MAX_CACHED_ACCOUNTS"), 100_000, 1),
        api_port=_int("BILLING_API_PORT", env.get("BILLING_API_PORT"), 0, 0, 65_535),
        auto_tick=_bool("BILLING_AUTO_TICK", env.get("BILLING_AUTO_TICK"), True),
        log_format=_choice("BILLING_LOG_FORMAT", env.get("BILLING_LOG_FORMAT"), "text", LOG_FORMATS),
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
