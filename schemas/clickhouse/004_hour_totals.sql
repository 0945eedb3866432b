-- Migration 004 (issue 19): per account and hour, the totals of its bill lines, for the pages and
-- queries that sum over every account (the console's operator overview: revenue and calls per
-- hour, top accounts). Summing bill_lines FINAL over a range reads every line (1,000,000 lines:
-- 1.5 s); this table has one row per account-hour, sorted by hour first, so a range reads only its
-- hours and FINAL merges only the hours still being written.
--
-- Kept exact by the worker, never by deltas: whenever a batch changes any line of an account-hour,
-- the worker writes that account-hour's totals over all its lines (it holds every line of an hour
-- it changes, pipeline/store/sink.py hour_totals), with revision = the highest revision of those lines.
-- A redelivered or replayed batch writes the same row again; a rebill's `rebill.lines` record goes
-- through the same path; a failed batch's rows are rolled back with the lines (statestore
-- SEQ_COLUMNS). The newest revision wins, like bill_lines: read with FINAL (or the
-- hourly_account_totals view).
CREATE TABLE IF NOT EXISTS bill_hour_totals
(
    hour                  DateTime64(0, 'Asia/Shanghai'),
    account_id            String,
    lines                 UInt32,                  -- bill lines of the account-hour
    calls                 UInt64,                  -- requests of the model lines (API calls)
    plugin_calls          UInt64,                  -- requests of the plugin lines
    input_tokens          UInt64,
    output_tokens         UInt64,
    free_tokens           UInt64,
    billed_input_tokens   UInt64,
    billed_output_tokens  UInt64,
    plugin_units          UInt64,                  -- quantity of the plugin lines
    amount                Decimal(18, 6),
    revision              UInt64,
    updated_at            DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (hour, account_id);

-- The lines written before this migration: their totals, at the revision the worker would give
-- them. Apply it (`billing migrate`) while no worker writes, as every migration.
INSERT INTO bill_hour_totals
SELECT hour, account_id, count(), sumIf(requests, NOT startsWith(item, 'plugin:')), sumIf(requests, startsWith(item, 'plugin:')),
       sum(input_tokens), sum(output_tokens), sum(free_tokens), sum(billed_input_tokens), sum(billed_output_tokens),
       sumIf(quantity, startsWith(item, 'plugin:')), sum(amount), max(revision), now64(3)
FROM bill_lines FINAL
GROUP BY account_id, hour;

-- User-facing (docs/sql.md): per account and hour, current totals of its bill lines.
CREATE VIEW IF NOT EXISTS hourly_account_totals AS
SELECT hour, toDate(hour, 'Asia/Shanghai') AS day, account_id, lines, calls, plugin_calls, input_tokens, output_tokens,
       free_tokens, billed_input_tokens, billed_output_tokens, plugin_units, amount
FROM bill_hour_totals FINAL;
