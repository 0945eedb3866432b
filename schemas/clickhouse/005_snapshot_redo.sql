-- Migration 005 (issue: merge loss): the account snapshot carries its unit's aggregates (a redo)
-- and its log position as columns.
--
-- A unit now writes its account snapshots (the commit point) BEFORE the mutable aggregates
-- (bill_lines, bill_hour_totals, rate_windows), so that no aggregate row is ever written at an
-- uncommitted revision: before, a background merge between a failed unit's lines and their
-- roll-back could collapse a line's committed revision into the uncommitted one, and the roll-back
-- then deleted the line's committed amount with it. A snapshot whose aggregates did not all land
-- is "in doubt"; its `redo` holds those rows (JSON: table -> rows in the insert's field order,
-- money as exact decimal text), and the worker writes them again (statestore.roll_forward,
-- roll_forward_partitions): same keys, same revisions, same values.
--
-- log_epoch, log_partition, log_offset: the snapshot's log position (also inside `state`), so that
-- a worker taking a partition finds the snapshots past the partition's progress row (the units
-- whose aggregates may be missing) without parsing every snapshot. Rows written before this
-- migration keep the defaults: they followed the old order (snapshot last) and are never in doubt.
ALTER TABLE account_state ADD COLUMN IF NOT EXISTS redo String DEFAULT '',
    ADD COLUMN IF NOT EXISTS log_epoch String DEFAULT '',
    ADD COLUMN IF NOT EXISTS log_partition Int32 DEFAULT -1,
    ADD COLUMN IF NOT EXISTS log_offset Int64 DEFAULT -1;
