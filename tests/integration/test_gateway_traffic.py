"""Gateway-shaped traffic on the batch edge (issue 18), on the real engine without a broker: one
record per message from many accounts, a bounded state cache, account ids that need escaping."""

from __future__ import annotations

import json
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


def test_a_rebill_keeps_the_records_refused_for_their_message_key(client) -> None:
    """Records refused when they arrived for where they came from (a message without a key on a
    topic of several partitions, or keyed by another account) are archived under the account they
    name. A rebill replays that account's archive, in which nothing records the message's key: it
    must refuse them again, not bill them (in partition order, which is not theirs) beside their
    rejections. With the same catalog a rebill changes nothing."""
    from pipeline.core.timestamps import parse_ts
    from pipeline.stream.partitioning import PlacementCheck
    from pipeline.stream.rebill import plan_rebill

    run = uuid.uuid4().hex[:6]
    lines = [line.replace('"account_id":"', f'"account_id":"{run}-', 1) for line in generate(400, seed=5723, accounts=4, bad_fraction=0.0)]
    accounts = sorted(accounts_of(lines))
    msgs = single_record_messages(lines, partitions=4)
    stray = {i for i in range(len(msgs)) if i % 7 == 3}  # an unkeyed message, or one keyed by the next account
    for i in stray:
        m = msgs[i]
        own = m.key.decode()
        other = accounts[(accounts.index(own) + 1) % len(accounts)].encode()
        msgs[i] = type(m)(m.partition, m.offset, None if i % 2 else other, m.value)
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False)
    processor.placement = PlacementCheck(4)
    processor.placement.check = lambda messages, topic="": {}  # placed by hand: only the keys are under test
    result = processor.process(msgs)
    assert result.unkeyed == len([i for i in stray if i % 2]) > 0
    refused = {r["event_id"] for r in queries.rejected(client) if r["account_id"] in accounts and "key" in r["detail"]}
    assert len(refused) > 20
    times = [parse_ts(json.loads(line)["timestamp"]) for line in lines]
    plan = plan_rebill(client, load_catalog(), min(times), max(times) + 1, accounts=accounts)
    assert plan.changes == [] and plan.now_billed == []
