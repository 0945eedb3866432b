"""The log epoch: which incarnation of the input log the stored positions belong to.

Positions (account snapshots, partition_progress, raw_records) are keyed by (epoch, partition,
offset), and a record at or below a stored position of the same epoch is skipped as a
redelivery. If the offsets restart under the same epoch (a re-created or restored topic, a
disaster-recovery failover to a mirrored cluster) every new record would be skipped as "already
applied", silently: 5 recharges at offsets 0-4 after a re-created topic, nothing applied.

So the epoch follows the topic's real identity: by default (`BILLING_LOG_EPOCH=auto`) it is the
Kafka cluster id and topic id (KIP-516, Metadata v10+); a new topic is a new epoch and starts
from nothing, as it should. An explicit `BILLING_LOG_EPOCH` still wins (`billing up` names one per
life of its memory broker), but each epoch is bound to the topic identity it was first used with
(table log_epochs) and a worker refuses to start when the topic under that name has another one.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
AUTO = "auto"


class LogIdentityChanged(Exception):
    """The topic behind an epoch is not the one the stored positions came from: stop."""


@dataclass(frozen=True)
class LogIdentity:
    topic: str
    cluster_id: str  # "" when the broker gives none
    topic_id: str  # "" when the broker gives none (Metadata below v10)

    @property
    def auto_epoch(self) -> str | None:
        if not self.topic_id:
            return None
        return f"{self.cluster_id or 'cluster'}/{self.topic_id}"


def describe(bootstrap: str, topic: str, **client_kwargs: Any) -> LogIdentity:
    """The cluster id and topic id of `topic` (kafka-python's admin client, Metadata v10+)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="billing-log-identity", **client_kwargs)
    try:
        cluster = admin.describe_cluster()
        topics = admin.describe_topics([topic])
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    topic_id = ""
    for t in topics:
        if t.get("name") == topic and not t.get("error_code"):
            raw = t.get("topic_id")
            topic_id = "" if raw is None or str(raw) == "00000000-0000-0000-0000-000000000000" else str(raw)
    return LogIdentity(topic, str(cluster.get("cluster_id") or ""), topic_id)


def resolve(client: Any, configured: str, identity: LogIdentity) -> str:
    """The epoch to run under, checked against what the stored positions were written under.
    `client` is a ClickHouse client (call on its thread); the table log_epochs comes from migration 003."""
    epoch = configured
    if configured == AUTO:
        auto = identity.auto_epoch
        if auto is None:
            raise LogIdentityChanged(
                f"BILLING_LOG_EPOCH=auto needs the topic id of {identity.topic}, and the broker gave none (Kafka older than "
                "2.8?). Set BILLING_LOG_EPOCH to a name of your own and change it whenever the topic is re-created or restored."
            )
        epoch = auto
    rows = client.query(
        "SELECT cluster_id, topic_id FROM log_epochs FINAL WHERE epoch = {e:String} AND topic = {t:String}",
        parameters={"e": epoch, "t": identity.topic},
    ).result_rows
    for cluster_id, topic_id in rows:
        if (
            topic_id
            and identity.topic_id
            and topic_id != identity.topic_id
            or (cluster_id and identity.cluster_id and cluster_id != identity.cluster_id)
        ):
            raise LogIdentityChanged(
                f"log epoch {epoch!r} was written from {identity.topic} with topic id {topic_id or '?'} on cluster "
                f"{cluster_id or '?'}, but that topic is now id {identity.topic_id or '?'} on cluster "
                f"{identity.cluster_id or '?'}: it was re-created, restored or failed over, and its offsets restarted. "
                "Under the same epoch its records would be skipped as already applied. Stopping. Use "
                "BILLING_LOG_EPOCH=auto (a new epoch per topic identity) or a new explicit name "
                "(docs/cluster-operations.md, fail over)."
            )
    if not rows:
        client.insert(
            "log_epochs",
            [[epoch, identity.topic, identity.cluster_id, identity.topic_id]],
            column_names=["epoch", "topic", "cluster_id", "topic_id"],
        )
        log.info("log epoch %s bound to %s (topic id %s, cluster %s)", epoch, identity.topic, identity.topic_id, identity.cluster_id)
    return epoch
