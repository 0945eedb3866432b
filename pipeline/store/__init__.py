"""ClickHouse: the connection, migrations, the writes of a batch (sink), the account snapshots
(statestore), the Storage interface the batch processor receives, and the read side (queries)."""
