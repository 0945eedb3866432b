-- Migration 007 (queries on a ClickHouse cluster): rebill_changes joins rebill_runs GLOBAL.
--
-- On a cluster every table is Distributed over shards; those with an account are sharded by it,
-- rebill_runs (no account) by run_id. The workers send distributed_product_mode='local'
-- (pipeline/store/chcluster.py), so that a subquery over a Distributed table inside a query over
-- another one runs against each shard's own rows: exact for tables sharded by account, whose rows
-- of one account meet on one shard. A run's row is on one shard only, though, and a local join
-- would have left run_at empty for the accounts of every other shard. GLOBAL reads the (small)
-- runs subquery once and sends it to every shard. On one server GLOBAL changes nothing.
CREATE OR REPLACE VIEW rebill_changes AS
SELECT d.run_id AS run_id, d.account_id AS account_id, d.hour AS hour, d.old_amount AS old_amount,
       d.new_amount AS new_amount, d.delta AS delta, toTimeZone(r.run_at, 'Asia/Shanghai') AS run_at
FROM rebill_diffs AS d FINAL
GLOBAL LEFT JOIN (SELECT run_id, max(run_at) AS run_at FROM rebill_runs GROUP BY run_id) AS r ON r.run_id = d.run_id;
