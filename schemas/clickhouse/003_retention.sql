-- Migration 003 (issue 21): the log-epoch record and per-table retention.
-- Version 002 is left for the user-facing views (002_views.sql); the runner applies any missing
-- version in order, so either file may land first. Never edit this file once applied: add 004.
--
-- Retention per table (what rebill and redelivery still need), see docs/cluster-operations.md:
--   raw_records, seen_records, priced_usage, bill_lines, settlements, account_status,
--   account_state, rejections, rebill_*: kept (the audit trail, rebuilds, dedupe of event ids
--   forever, rebills replay the whole raw log of an account).
--   rate_windows: the fold reads only the minutes of the records it folds (2 minutes kept in
--   memory); 7 days covers any redelivery or late record a worker still applies.
--   barriers: only `billing wait` reads them, right after writing: 7 days.
--   partition_progress, log_epochs, schema_migrations: tiny, kept.

-- Which topic identity (cluster id, topic id) each log epoch's positions were written from:
-- a worker refuses an epoch whose topic was re-created, restored or failed over.
CREATE TABLE IF NOT EXISTS log_epochs
(
    epoch       String,
    topic       String,
    cluster_id  String,
    topic_id    String,
    first_seen  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (epoch, topic);

ALTER TABLE rate_windows MODIFY TTL toDateTime(window_start) + INTERVAL 7 DAY;

ALTER TABLE barriers MODIFY TTL toDateTime(processed_at) + INTERVAL 7 DAY;
