#!/usr/bin/env bash
# Create the billing topics with the configs they need, fix the configs of existing ones, and
# verify every topic: stop loudly if one is weaker than required. Idempotent: safe to run on every
# deployment. Runs in the apache/kafka image (its CLI tools); used by deploy/docker-compose.yml
# (service kafka-init) and deploy/k8s/job-topics.yaml. The workers run with BILLING_CREATE_TOPICS=0
# and only check the topics (pipeline/ingest/topics.py does the same checks).
#
# Environment:
#   TOPICS_BOOTSTRAP            Kafka bootstrap servers (required), e.g. kafka:9092
#   TOPIC_PREFIX                topic name prefix, as BILLING_TOPIC_PREFIX (default billing)
#   TOPIC_INPUT                 the input topic's name, as BILLING_INPUT_TOPIC (default <prefix>.input)
#   TOPIC_PARTITIONS            partitions per topic, as BILLING_PARTITIONS (default 24)
#   TOPIC_REPLICATION_FACTOR    replicas per partition, as BILLING_TOPIC_REPLICATION (default 3)
#   TOPIC_MIN_INSYNC_REPLICAS   min.insync.replicas, as BILLING_TOPIC_MIN_INSYNC (default 2)
#   TOPICS_COMMAND_CONFIG       optional client properties file for TLS/SASL (--command-config)
#   KAFKA_BIN_DIR               where kafka-topics.sh lives (default /opt/kafka/bin)
#
# The configs mirror pipeline/ingest/topics.py. The input topic is the billing source of truth: kept
# forever and stamped by the broker (LogAppendTime), so a back-dated record is never deleted on
# arrival (DESIGN §2). Every topic is replicated, acknowledged by min.insync.replicas replicas
# (the producers use acks=all) and never elects an out-of-sync leader (which would lose
# acknowledged records).
set -euo pipefail

bootstrap="${TOPICS_BOOTSTRAP:?TOPICS_BOOTSTRAP must name the Kafka bootstrap servers}"
prefix="${TOPIC_PREFIX:-billing}"
input="${TOPIC_INPUT:-$prefix.input}"
partitions="${TOPIC_PARTITIONS:-24}"
replication="${TOPIC_REPLICATION_FACTOR:-3}"
min_insync="${TOPIC_MIN_INSYNC_REPLICAS:-2}"
bin="${KAFKA_BIN_DIR:-/opt/kafka/bin}"
client=()
if [ -n "${TOPICS_COMMAND_CONFIG:-}" ]; then client=(--command-config "$TOPICS_COMMAND_CONFIG"); fi
durable="min.insync.replicas=$min_insync,unclean.leader.election.enable=false"

if [ "$min_insync" -ge "$replication" ] && [ "$replication" -gt 1 ]; then
  echo "create-topics: min.insync.replicas $min_insync must be below the replication factor $replication" >&2
  exit 1
fi

# verify_configs NAME CONFIGS: every required config is set at least as strongly on the broker
verify_configs() {
  local name="$1" required="$2" kv key want have described failed=0
  described="$("$bin/kafka-configs.sh" --bootstrap-server "$bootstrap" "${client[@]}" --describe --all \
    --entity-type topics --entity-name "$name")"
  IFS=',' read -ra kv <<<"$required"
  for pair in "${kv[@]}"; do
    key="${pair%%=*}" want="${pair#*=}"
    have="$(printf '%s\n' "$described" | sed -n "s/^[[:space:]]*${key//./\\.}=\([^[:space:]]*\).*/\1/p" | head -n 1)"
    if [ "$key" = "min.insync.replicas" ]; then
      if ! [[ "$have" =~ ^[0-9]+$ ]] || [ "$have" -lt "$want" ]; then failed=1; fi
    elif [ "$have" != "$want" ]; then
      failed=1
    fi
    if [ "$failed" = 1 ]; then
      echo "create-topics: $name has $key=${have:-unset}, required $want" >&2
      exit 1
    fi
  done
}

# ensure_topic NAME CONFIGS [any]: "any" accepts an existing topic's partition count (the output
# topics keep theirs when the input topic is grown into a new topic)
ensure_topic() {
  local name="$1" configs="$2,$durable" counts="${3:-exact}" config args=() described actual rf
  IFS=',' read -ra config <<<"$configs"
  for c in "${config[@]}"; do args+=(--config "$c"); done
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" "${client[@]}" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor "$replication" "${args[@]}"
  # --if-not-exists leaves the configs of an existing topic alone: set them explicitly.
  "$bin/kafka-configs.sh" --bootstrap-server "$bootstrap" "${client[@]}" --alter \
    --entity-type topics --entity-name "$name" --add-config "$configs"
  described="$("$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" "${client[@]}" --describe --topic "$name")"
  # Records are keyed by account: a different partition count moves accounts between partitions
  # (the workers stop on it). Never add partitions: grow with a new topic (docs/cluster-operations.md).
  actual="$(printf '%s\n' "$described" | sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  if [ "$counts" = exact ] && [ "$actual" != "$partitions" ]; then
    echo "create-topics: $name has ${actual:-unknown} partitions, expected $partitions" >&2
    exit 1
  fi
  # A replication factor cannot be raised by a config change (it needs a partition reassignment).
  rf="$(printf '%s\n' "$described" | sed -n 's/.*ReplicationFactor:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  if ! [[ "$rf" =~ ^[0-9]+$ ]] || [ "$rf" -lt "$replication" ]; then
    echo "create-topics: $name has replication factor ${rf:-unknown}, required $replication (reassign its partitions)" >&2
    exit 1
  fi
  verify_configs "$name" "$configs"
  echo "create-topics: $name ok ($partitions partitions, replication $rf; $configs)"
}

ensure_topic "$input" "retention.ms=-1,retention.bytes=-1,message.timestamp.type=LogAppendTime"
ensure_topic "$prefix.account-status" "cleanup.policy=compact" any
ensure_topic "$prefix.rate-violations" "retention.ms=604800000" any
