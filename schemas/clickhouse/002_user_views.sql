-- User-facing views (docs/sql.md): a plain SELECT on any of them gives current values, never a
-- revision twice, so users need neither FINAL nor argMax. The tables of 001_core.sql are the
-- pipeline's internal revision logs. Times are Asia/Shanghai (+08:00), money Decimal(18, 6) CNY.
-- Applied by `billing migrate` and at every worker start, like 001_core.sql (idempotent).

-- What rebills did to usage records' rejections (the catalog now in force): resolved = 1 when a
-- rebill billed the record, else the reason it gives now. One row per rebill run that replayed
-- the record; the newest run wins. A call the stream billed and a rebill rejects has no row in
-- `rejections`: its row here carries the record itself (event_ts, record), so it is listed too.
CREATE TABLE IF NOT EXISTS rejection_revisions
(
    account_id  String,
    record_id   String,
    run_id      String,
    revised_at  DateTime64(3, 'UTC'),
    resolved    UInt8,
    reason      LowCardinality(String),
    detail      String,
    event_ts    DateTime64(6, 'UTC'),
    record      String
)
ENGINE = ReplacingMergeTree(revised_at)
ORDER BY (account_id, record_id);

-- Hourly bill lines, current values (BILLING_RULES §8).
CREATE VIEW IF NOT EXISTS hourly_bills AS
SELECT account_id, hour, toDate(hour, 'Asia/Shanghai') AS day, toStartOfMonth(hour, 'Asia/Shanghai') AS month,
       api_key_id, item, startsWith(item, 'plugin:') AS is_plugin,
       requests, input_tokens, output_tokens, free_tokens, billed_input_tokens, billed_output_tokens, quantity, amount,
       toTimeZone(updated_at, 'Asia/Shanghai') AS updated_at
FROM bill_lines FINAL;

-- Per day (Asia/Shanghai), per key and item.
CREATE VIEW IF NOT EXISTS daily_bills AS
SELECT account_id, day, api_key_id, item,
       sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(free_tokens) AS free_tokens, sum(billed_input_tokens) AS billed_input_tokens,
       sum(billed_output_tokens) AS billed_output_tokens, sum(quantity) AS quantity, sum(amount) AS amount
FROM hourly_bills
GROUP BY account_id, day, api_key_id, item;

-- Per calendar month (Asia/Shanghai), per key and item: what a monthly statement lists.
CREATE VIEW IF NOT EXISTS monthly_bills AS
SELECT account_id, month, api_key_id, item,
       sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(free_tokens) AS free_tokens, sum(billed_input_tokens) AS billed_input_tokens,
       sum(billed_output_tokens) AS billed_output_tokens, sum(quantity) AS quantity, sum(amount) AS amount
FROM hourly_bills
GROUP BY account_id, month, api_key_id, item;

-- One row per billed (or console) call, with its free/billed split and rate-limit flags.
CREATE VIEW IF NOT EXISTS priced_calls AS
SELECT account_id, event_id, toTimeZone(ts, 'Asia/Shanghai') AS ts, hour, api_key_id, model, channel,
       input_tokens, output_tokens, free_tokens, billed_input_tokens, billed_output_tokens,
       token_amount, plugin_amount, token_amount + plugin_amount AS amount, plugins, flags
FROM priced_usage FINAL;

-- Settlements of closed hours against vouchers and cash (BILLING_RULES §9).
CREATE VIEW IF NOT EXISTS account_settlements AS
SELECT account_id, hour, kind, amount, voucher_part, cash_part, debt_added, debt_after, balance_after, seq,
       toTimeZone(settled_at, 'Asia/Shanghai') AS settled_at
FROM settlements FINAL;

-- Every account's current balances and status; since = event time of its latest status change.
CREATE VIEW IF NOT EXISTS account_balances AS
SELECT s.account_id AS account_id,
       if(s.debt > 0, 'arrears', 'active') AS status,
       s.cash_balance AS cash_balance,
       s.debt AS debt,
       s.voucher_balance AS voucher_balance,
       s.free_tokens_used AS free_tokens_used,
       if(c.account_id = '', NULL, c.since) AS status_since,
       s.last_event_at AS last_event_at,
       s.updated_at AS updated_at
FROM
(
    SELECT account_id,
           CAST(JSONExtractString(state, 'cash_balance') AS Decimal(18, 6)) AS cash_balance,
           CAST(JSONExtractString(state, 'debt') AS Decimal(18, 6)) AS debt,
           arraySum(arrayMap(v -> CAST(JSONExtractString(v, 2) AS Decimal(18, 6)), JSONExtractArrayRaw(state, 'vouchers')))
               AS voucher_balance,
           JSONExtractUInt(state, 'free_used') AS free_tokens_used,
           toTimeZone(fromUnixTimestamp64Micro(JSONExtractInt(state, 'max_ts_us'), 'UTC'), 'Asia/Shanghai') AS last_event_at,
           toTimeZone(updated, 'Asia/Shanghai') AS updated_at
    FROM
    (
        SELECT account_id, argMax(state, seq) AS state, max(updated_at) AS updated
        FROM account_state
        GROUP BY account_id
    )
) AS s
LEFT JOIN
(
    SELECT account_id, toTimeZone(argMax(clock, seq), 'Asia/Shanghai') AS since
    FROM account_status
    GROUP BY account_id
) AS c ON c.account_id = s.account_id;

-- Vouchers of every account: what is left and when it expires (NULL: never).
CREATE VIEW IF NOT EXISTS account_vouchers AS
SELECT account_id,
       JSONExtractString(v, 1) AS voucher_id,
       CAST(JSONExtractString(v, 2) AS Decimal(18, 6)) AS remaining,
       if(JSONType(v, 3) = 'Null', NULL, toTimeZone(fromUnixTimestamp64Micro(JSONExtractInt(v, 3), 'UTC'), 'Asia/Shanghai'))
           AS expires_at
FROM
(
    SELECT account_id, argMax(state, seq) AS state FROM account_state GROUP BY account_id
)
ARRAY JOIN JSONExtractArrayRaw(state, 'vouchers') AS v;

-- API keys of every account: created, revoked (NULL: active).
CREATE VIEW IF NOT EXISTS api_keys AS
SELECT account_id, tupleElement(k, 1) AS api_key_id,
       toTimeZone(fromUnixTimestamp64Micro(JSONExtractInt(tupleElement(k, 2), 1), 'UTC'), 'Asia/Shanghai') AS created_at,
       if(JSONType(tupleElement(k, 2), 2) = 'Null', NULL,
          toTimeZone(fromUnixTimestamp64Micro(JSONExtractInt(tupleElement(k, 2), 2), 'UTC'), 'Asia/Shanghai')) AS revoked_at,
       if(JSONType(tupleElement(k, 2), 2) = 'Null' OR JSONExtractInt(tupleElement(k, 2), 2) > max_ts_us, 'active', 'revoked') AS key_state
FROM
(
    SELECT account_id, argMax(state, seq) AS last_state, JSONExtractInt(last_state, 'max_ts_us') AS max_ts_us
    FROM account_state GROUP BY account_id
)
ARRAY JOIN JSONExtractKeysAndValuesRaw(last_state, 'keys') AS k;

-- Records that are not billed, with the reason the catalog now in force gives (after rebills);
-- first_reason is the stream's (empty for a call the stream billed and a later rebill rejects).
CREATE VIEW IF NOT EXISTS rejected_records AS
SELECT r.account_id AS account_id, r.record_id AS record_id, r.event_id AS event_id, r.kind AS kind,
       if(v.account_id = '', r.reason, v.reason) AS reason,
       if(v.account_id = '', r.detail, v.detail) AS detail,
       toString(r.reason) AS first_reason,
       if(r.event_ts = toDateTime64(0, 6, 'UTC'), NULL, toTimeZone(r.event_ts, 'Asia/Shanghai')) AS event_ts,
       toTimeZone(r.rejected_at, 'Asia/Shanghai') AS rejected_at,
       r.record AS record
FROM rejections AS r FINAL
LEFT JOIN
(
    SELECT account_id, record_id, argMax(resolved, revised_at) AS resolved, argMax(reason, revised_at) AS reason,
           argMax(detail, revised_at) AS detail
    FROM rejection_revisions
    GROUP BY account_id, record_id
) AS v ON v.account_id = r.account_id AND v.record_id = r.record_id
WHERE if(v.account_id = '',
         (r.account_id, r.record_id) NOT IN (SELECT account_id, record_id FROM rejection_resolutions),
         v.resolved = 0)
UNION ALL
SELECT account_id, record_id, record_id AS event_id, 'usage' AS kind, reason, detail, '' AS first_reason,
       toTimeZone(last_ts, 'Asia/Shanghai') AS event_ts, toTimeZone(last_at, 'Asia/Shanghai') AS rejected_at, record
FROM
(
    SELECT account_id, record_id, argMax(resolved, revised_at) AS resolved, argMax(reason, revised_at) AS reason,
           argMax(detail, revised_at) AS detail, argMax(event_ts, revised_at) AS last_ts, max(revised_at) AS last_at,
           argMax(record, revised_at) AS record
    FROM rejection_revisions
    GROUP BY account_id, record_id
)
WHERE resolved = 0 AND record != '' AND (account_id, record_id) NOT IN (SELECT account_id, record_id FROM rejections);

-- Calls over a rate limit (still billed), one row per call and limit (BILLING_RULES §6).
CREATE VIEW IF NOT EXISTS rate_limit_violations AS
SELECT account_id, event_id, toTimeZone(ts, 'Asia/Shanghai') AS ts, toStartOfHour(ts, 'Asia/Shanghai') AS hour,
       limit_name, toTimeZone(window_start, 'Asia/Shanghai') AS window_start, observed, allowed
FROM rate_violations FINAL;

-- `billing rebill` runs: who, when, what range and catalog, how much changed.
CREATE VIEW IF NOT EXISTS rebills AS
SELECT run_id, run_by, toTimeZone(run_at, 'Asia/Shanghai') AS run_at, range_from, range_to, account_filter,
       catalog_version, records_read, lines_changed
FROM rebill_runs FINAL;

-- Per rebill run and account-hour: the amount before, after, and the difference.
CREATE VIEW IF NOT EXISTS rebill_changes AS
SELECT d.run_id AS run_id, d.account_id AS account_id, d.hour AS hour, d.old_amount AS old_amount,
       d.new_amount AS new_amount, d.delta AS delta, toTimeZone(r.run_at, 'Asia/Shanghai') AS run_at
FROM rebill_diffs AS d FINAL
LEFT JOIN (SELECT run_id, max(run_at) AS run_at FROM rebill_runs GROUP BY run_id) AS r ON r.run_id = d.run_id;
