-- Cluster deployment, step 1: the database on every node of the cluster.
-- NOT applied by `billing migrate` (it reads only schemas/clickhouse/*.sql, for one server).
-- Apply once with clickhouse-client against any node:
--   clickhouse-client --multiquery < schemas/clickhouse/cluster/000_database.sql
-- The name must match the database in BILLING_CLICKHOUSE (http://user:pass@host:8123/billing).
CREATE DATABASE IF NOT EXISTS billing ON CLUSTER '{cluster}';
