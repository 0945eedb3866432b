#!/usr/bin/env bash
# Create the billing topics with the configs they need, or fix the configs of existing ones.
# Idempotent: safe to run on every deployment. Runs in the apache/kafka image (its CLI tools);
# used by deploy/docker-compose.yml (service kafka-init) and deploy/k8s/job-topics.yaml.
#
# Environment:
#   TOPICS_BOOTSTRAP          Kafka bootstrap servers (required), e.g. kafka:9092
#   TOPIC_PREFIX              topic name prefix, as BILLING_TOPIC_PREFIX (default billing)
#   TOPIC_PARTITIONS          partitions per topic, as BILLING_PARTITIONS (default 4)
#   TOPIC_REPLICATION_FACTOR  replicas per partition (default 1: single broker; use 3 on a cluster)
#   KAFKA_BIN_DIR             where kafka-topics.sh lives (default /opt/kafka/bin)
#
# The configs mirror pipeline/topics.py. The input topic keeps everything forever and is stamped
# by the broker (LogAppendTime), so a back-dated record is never deleted on arrival (DESIGN §2).
set -euo pipefail

bootstrap="${TOPICS_BOOTSTRAP:?TOPICS_BOOTSTRAP must name the Kafka bootstrap servers}"
prefix="${TOPIC_PREFIX:-billing}"
partitions="${TOPIC_PARTITIONS:-4}"
replication="${TOPIC_REPLICATION_FACTOR:-1}"
bin="${KAFKA_BIN_DIR:-/opt/kafka/bin}"

ensure_topic() {
  local name="$1" configs="$2" config args=()
  IFS=',' read -ra config <<<"$configs"
  for c in "${config[@]}"; do args+=(--config "$c"); done
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor "$replication" "${args[@]}"
  # --if-not-exists leaves the configs of an existing topic alone: set them explicitly.
  "$bin/kafka-configs.sh" --bootstrap-server "$bootstrap" --alter \
    --entity-type topics --entity-name "$name" --add-config "$configs"
  # Records are keyed by account: a different partition count would move accounts between
  # partitions (and Faust refuses co-partitioned topics whose counts differ). Stop loudly.
  local actual
  actual="$("$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --describe --topic "$name" \
    | sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  if [ "$actual" != "$partitions" ]; then
    echo "create-topics: $name has ${actual:-unknown} partitions, expected $partitions" >&2
    exit 1
  fi
  echo "create-topics: $name ok ($partitions partitions; $configs)"
}

ensure_topic "$prefix.input" "retention.ms=-1,retention.bytes=-1,message.timestamp.type=LogAppendTime"
ensure_topic "$prefix.account-status" "cleanup.policy=compact"
ensure_topic "$prefix.rate-violations" "retention.ms=604800000"
