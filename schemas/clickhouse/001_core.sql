-- Billing tables, single server (embedded chdb or one ClickHouse server).
-- Applied idempotently at start by `billing worker`/`billing up` and by `billing migrate`.
-- Revisable tables are ReplacingMergeTree on a revision derived from the input, so a redelivered
-- or replayed batch rewrites identical rows; readers use FINAL.

-- Every input record as received: the audit trail, the source for rebuilds and rebills.
CREATE TABLE IF NOT EXISTS raw_records
(
    epoch        String,                      -- incarnation of the input log (offsets restart with it)
    partition    UInt32,
    offset       UInt64,
    idx          UInt32,                      -- position inside a batched message (RFC 7464 sequence)
    account_id   String,
    kind         LowCardinality(String),
    record_id    String,
    event_ts     DateTime64(6, 'UTC'),        -- 1970-01-01 when the record had no valid timestamp
    received_at  DateTime64(3, 'UTC'),
    payload      String
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, epoch, partition, offset, idx);

-- Identities already applied per account (usage: event_id; others: content digest).
CREATE TABLE IF NOT EXISTS seen_records
(
    account_id  String,
    rid_hash    UInt64,                       -- looked up by hash (cheap to bind), matched on record_id
    record_id   String,
    digest      String,
    seq         UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, rid_hash, record_id);

-- Hourly bill lines (BILLING_RULES §8): cumulative values, newest revision wins.
CREATE TABLE IF NOT EXISTS bill_lines
(
    account_id            String,
    hour                  DateTime64(0, 'Asia/Shanghai'),
    api_key_id            String,
    item                  LowCardinality(String),
    requests              UInt64,
    input_tokens          UInt64,
    output_tokens         UInt64,
    free_tokens           UInt64,
    billed_input_tokens   UInt64,
    billed_output_tokens  UInt64,
    quantity              UInt64,
    amount                Decimal(18, 6),
    revision              UInt64,
    updated_at            DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (account_id, hour, api_key_id, item);

-- Priced usage: one row per billed call, with its free/billed split and rate-limit flags.
CREATE TABLE IF NOT EXISTS priced_usage
(
    account_id            String,
    hour                  DateTime64(0, 'Asia/Shanghai'),
    event_id              String,
    ts                    DateTime64(6, 'UTC'),
    api_key_id            String,
    model                 LowCardinality(String),
    channel               LowCardinality(String),
    input_tokens          UInt64,
    output_tokens         UInt64,
    free_tokens           UInt64,
    billed_input_tokens   UInt64,
    billed_output_tokens  UInt64,
    token_amount          Decimal(18, 6),
    plugin_amount         Decimal(18, 6),
    plugins               Map(String, UInt64),
    flags                 Array(LowCardinality(String)),
    seq                   UInt64
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (account_id, hour, event_id);

-- Records that cannot be billed, with the reason (BILLING_RULES §10).
CREATE TABLE IF NOT EXISTS rejections
(
    account_id   String,
    record_id    String,
    event_id     String,
    kind         LowCardinality(String),
    reason       LowCardinality(String),
    detail       String,
    event_ts     DateTime64(6, 'UTC'),
    record       String,
    seq          UInt64,
    rejected_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (account_id, record_id);

-- Rate windows (BILLING_RULES §6): counts per account and tumbling window.
CREATE TABLE IF NOT EXISTS rate_windows
(
    account_id    String,
    kind          LowCardinality(String),     -- 's' (QPS) or 'm' (QPM, TPM)
    window_start  DateTime64(6, 'UTC'),
    requests      UInt64,
    tokens        UInt64,
    revision      UInt64
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (account_id, kind, window_start);

-- Calls over a limit: still billed, flagged and published for enforcement.
CREATE TABLE IF NOT EXISTS rate_violations
(
    account_id    String,
    event_id      String,
    ts            DateTime64(6, 'UTC'),
    limit_name    LowCardinality(String),
    window_start  DateTime64(6, 'UTC'),
    observed      UInt64,
    allowed       UInt64,
    seq           UInt64
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY (account_id, event_id, limit_name);

-- Durable account state after each batch: what a restart on a forgetful broker resumes from.
CREATE TABLE IF NOT EXISTS account_state
(
    account_id  String,
    seq         UInt64,
    state       String,
    updated_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY account_id;

-- Hourly settlements against vouchers and cash (BILLING_RULES §9); adjustments settle late usage.
CREATE TABLE IF NOT EXISTS settlements
(
    account_id     String,
    hour           DateTime64(0, 'Asia/Shanghai'),
    kind           LowCardinality(String),      -- regular | adjustment
    amount         Decimal(18, 6),
    voucher_part   Decimal(18, 6),
    cash_part      Decimal(18, 6),
    debt_added     Decimal(18, 6),
    debt_after     Decimal(18, 6),
    balance_after  Decimal(18, 6),
    seq            UInt64,
    settled_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, seq, hour);

-- Every change of an account's status (active | arrears), as also published on the status topic.
CREATE TABLE IF NOT EXISTS account_status
(
    account_id    String,
    status        LowCardinality(String),
    debt          Decimal(18, 6),
    cash_balance  Decimal(18, 6),
    clock         DateTime64(6, 'UTC'),
    seq           UInt64,
    changed_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, seq);

-- Audit of `billing rebill` runs: who, when, range, catalog, records read, per account-hour diff.
CREATE TABLE IF NOT EXISTS rebill_runs
(
    run_id           String,
    run_by           String,
    run_at           DateTime64(3, 'UTC'),
    range_from       String,
    range_to         String,
    account_filter   String,
    catalog_version  String,
    records_read     UInt64,
    lines_changed    UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY run_id;

CREATE TABLE IF NOT EXISTS rebill_diffs
(
    run_id      String,
    account_id  String,
    hour        DateTime64(0, 'Asia/Shanghai'),
    old_amount  Decimal(18, 6),
    new_amount  Decimal(18, 6),
    delta       Decimal(18, 6)
)
ENGINE = ReplacingMergeTree
ORDER BY (run_id, account_id, hour);

-- Rejected calls that a rebill billed (e.g. no_price_in_force under the old catalog).
CREATE TABLE IF NOT EXISTS rejection_resolutions
(
    account_id  String,
    record_id   String,
    run_id      String
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, record_id);

-- How far each partition of each input log has been processed (the worker's offset-gap check).
CREATE TABLE IF NOT EXISTS partition_progress
(
    epoch      String,
    partition  UInt32,
    offset     UInt64
)
ENGINE = ReplacingMergeTree(offset)
ORDER BY (epoch, partition);

-- `billing wait` barriers: a row per partition once everything before the barrier is written.
CREATE TABLE IF NOT EXISTS barriers
(
    barrier_id    String,
    partition     UInt32,
    processed_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (barrier_id, partition);

-- Daily and monthly totals are views over the hourly lines, never stored twice.
CREATE VIEW IF NOT EXISTS bill_lines_daily AS
SELECT account_id, toDate(hour, 'Asia/Shanghai') AS day, api_key_id, item,
       sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(free_tokens) AS free_tokens, sum(billed_input_tokens) AS billed_input_tokens,
       sum(billed_output_tokens) AS billed_output_tokens, sum(quantity) AS quantity, sum(amount) AS amount
FROM bill_lines FINAL
GROUP BY account_id, day, api_key_id, item;

CREATE VIEW IF NOT EXISTS bill_lines_monthly AS
SELECT account_id, toStartOfMonth(hour, 'Asia/Shanghai') AS month, item,
       sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(free_tokens) AS free_tokens, sum(billed_input_tokens) AS billed_input_tokens,
       sum(billed_output_tokens) AS billed_output_tokens, sum(quantity) AS quantity, sum(amount) AS amount
FROM bill_lines FINAL
GROUP BY account_id, month, item;

CREATE VIEW IF NOT EXISTS rate_violations_hourly AS
SELECT account_id, toStartOfHour(toTimeZone(ts, 'Asia/Shanghai')) AS hour, limit_name, count() AS violations
FROM rate_violations FINAL
GROUP BY account_id, hour, limit_name;
