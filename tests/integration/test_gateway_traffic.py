"""Gateway-shaped traffic on the batch edge (issue 18), on the real engine without a broker: one
record per message from many accounts, a bounded state cache, account ids that need escaping."""

from __future__ import annotations

import uuid

import pytest

from pipeline.batch.processor import BatchProcessor
from pipeline.core.catalog import load_catalog
from pipeline.core.state import AccountState
from pipeline.demo.workload import generate
from pipeline.store import queries, statestore
from tests.integration.stack import bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.messages import one_record_messages as single_record_messages
from tests.oracle import expected

pytestmark = pytest.mark.integration


def test_a_state_cache_smaller_than_the_accounts_keeps_bills_exact(client) -> None:
    """Accounts evicted between batches come back from their snapshots: the bills are the
    oracle's, with at most `max_cached_accounts` accounts (plus the batch's own) kept in memory."""
    lines = generate(3000, seed=181, accounts=40)
    run = uuid.uuid4().hex[:6]  # accounts of this run only (the engine is shared by the session)
    lines = [line.replace('"account_id":"', f'"account_id":"{run}-', 1) for line in lines]
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=300, max_cached_accounts=5)
    msgs = single_record_messages(lines)
    sizes = []
    for i in range(0, len(msgs), 20):
        processor.process(msgs[i : i + 20])
        sizes.append(len(processor.states))
    assert max(sizes[1:]) < 40  # evicted: never all the accounts in memory after a batch
    assert bills_by_key(queries.bills(client), accounts_of(lines)) == expected(lines).bills


def test_account_ids_that_need_escaping_load_their_snapshots(client) -> None:
    """Bound arrays are rendered in one string join; ids with a quote or a backslash take
    clickhouse-connect's own escaping and still find their rows."""
    odd = [f"o'brien-{uuid.uuid4().hex[:6]}", f"back\\slash-{uuid.uuid4().hex[:6]}", f"plain-{uuid.uuid4().hex[:6]}"]
    client.insert(
        "account_state", [[acc, 3, AccountState(acc, seq=3).to_json().decode()] for acc in odd], column_names=["account_id", "seq", "state"]
    )
    loaded = statestore.load_states(client, odd)
    assert sorted(loaded) == sorted(odd) and all(state.seq == 3 for state in loaded.values())
    assert str(statestore.str_array(["a-1", "b"])) == "['a-1','b']"
    assert statestore.str_array(["o'x"]) == ["o'x"]  # left to clickhouse-connect
    assert statestore.load_lines(client, [(acc, 0) for acc in odd], {acc: 3 for acc in odd}) == {}


def test_a_failed_unit_of_thousands_of_accounts_is_rolled_back(client, monkeypatch) -> None:
    """A unit of gateway traffic touches about one account per record. Its write fails before its
    snapshots: everything it wrote is deleted (statestore.roll_back binds the accounts; written into
    the statement, 6,000 ids passed ClickHouse's max_query_size and the roll back failed, leaving
    the rows), and the retry bills exactly."""
    from tests.integration.test_processor_edges import _fail_halfway

    run = uuid.uuid4().hex[:6]
    lines = [line.replace('"account_id":"', f'"account_id":"{run}-', 1) for line in generate(24000, seed=5721, accounts=6000)]
    accounts = accounts_of(lines)
    assert len(accounts) == 6000
    _fail_halfway(monkeypatch, 1)
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, write_records=30_000)
    msgs = single_record_messages(lines)
    with pytest.raises(ConnectionError, match="halfway"):
        processor.process(msgs)
    left = {
        table: client.query(
            f"SELECT count() FROM {table} WHERE account_id IN {{a:Array(String)}}", parameters={"a": sorted(accounts)}
        ).result_rows[0][0]
        for table in ("seen_records", "priced_usage", "rejections")
    }
    assert left == {"seen_records": 0, "priced_usage": 0, "rejections": 0}  # nothing was committed: all of it deleted
    processor.process(msgs)
    assert bills_by_key(queries.bills(client), accounts) == expected(lines).bills
