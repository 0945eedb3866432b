"""The topics the product uses, with the configs that make them replayable or compacted (DESIGN §2)."""

from __future__ import annotations

from pipeline.broker import ensure_topics
from pipeline.settings import Settings

# Input: replayable forever and stamped by the broker, so that a back-dated record is never
# deleted on arrival by time-based retention.
INPUT_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "message.timestamp.type": "LogAppendTime"}
STATUS_CONFIG = {"cleanup.policy": "compact"}
VIOLATIONS_CONFIG = {"retention.ms": str(7 * 24 * 3600 * 1000)}


def ensure_all(settings: Settings, bootstrap: str) -> list[str]:
    """Create every topic if missing (same partition count for all: they are keyed by account)."""
    specs = {
        settings.input_topic: INPUT_CONFIG,
        settings.status_topic: STATUS_CONFIG,
        settings.violations_topic: VIOLATIONS_CONFIG,
    }
    ensure_topics(bootstrap, {name: settings.partitions for name in specs}, specs)
    return list(specs)
