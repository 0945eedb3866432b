-- Migration 006 (issue: a refused aggregate after the commit): Null-engine twins of the mutable
-- aggregates, that check a unit's aggregate rows before its commit point.
--
-- Since migration 005 a unit writes its account snapshots (the commit point) BEFORE bill_lines,
-- bill_hour_totals and rate_windows. A value ClickHouse refuses in one of those came after the
-- commit, which cannot be taken back, and the worker was stuck on that batch for everyone. So a
-- unit first inserts the very same bodies (same columns, same bytes) into these twins, before the
-- snapshots: they have the exact column types of their tables (CREATE TABLE ... AS), so a value the
-- columns refuse is refused here, before the commit, and the worker's isolation rejects its record
-- (stream/isolation.py). A Null table parses and checks the rows, and stores nothing. On a cluster
-- each node has its own (no Distributed table: there is nothing to store or to read back).
CREATE TABLE IF NOT EXISTS bill_lines_check AS bill_lines ENGINE = Null;
CREATE TABLE IF NOT EXISTS bill_hour_totals_check AS bill_hour_totals ENGINE = Null;
CREATE TABLE IF NOT EXISTS rate_windows_check AS rate_windows ENGINE = Null;
