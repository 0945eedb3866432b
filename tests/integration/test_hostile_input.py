"""Issue 16's reproductions, on the real engine (and the real broker where it takes one): no record,
producer or caller can stop billing for others, crash the worker or move money."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.batch.processor import BatchProcessor, ClockBounds, Message
from pipeline.core import control
from pipeline.core.catalog import load_catalog
from pipeline.runtime import read_runtime
from pipeline.store import queries, sink
from pipeline.stream.isolation import Isolator
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration
KEY = b"integration-control-key-0123456789abcdef"
TS = "2024-09-18T10:00:00+08:00"


def send_raw(stack: Stack, items: list[tuple[bytes, bytes | None]]) -> None:
    """Straight into the input topic, as any producer could (no `billing publish`)."""
    producer = KafkaProducer(bootstrap_servers=stack.kafka())
    for key, value in items:
        producer.send("billing.input", key=key, value=value)
    producer.flush()
    producer.close()


def body(kind: str, account: str, ts: str = TS, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "account_id": account, "timestamp": ts, **fields}


def usage(
    account: str, event_id: str, ts: str = TS, key: str = "k1", inp: int = 1000, out: int = 100, model: str = "xingchen-plus"
) -> dict[str, Any]:
    return {
        "account_id": account,
        "timestamp": ts,
        "event_id": event_id,
        "api_key_id": key,
        "model": model,
        "input_tokens": inp,
        "output_tokens": out,
    }


def account(stack: Stack, acc: str) -> dict[str, Any]:
    return json.loads(stack.cli("account", acc, "--format", "json").stdout)


def test_hostile_producer_cannot_stop_or_move_money(stack: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    rich, victim, normal = f"rich-{run}", f"victim-{run}", f"normal-{run}"
    hostile: list[tuple[bytes, bytes | None]] = [
        # 1. a balance past Decimal(18, 6): the second recharge would overflow it
        (rich.encode(), orjson.dumps(body("credit.recharge", rich, amount="999999999999.999999"))),
        (rich.encode(), orjson.dumps(body("credit.recharge", rich, "2024-09-18T10:00:01+08:00", amount="0.000001"))),
        # 2. a tombstone
        (victim.encode(), None),
        (victim.encode(), b""),
        (victim.encode(), b"\xff\xfe not utf-8"),
        # 3. forged control records: a refund by rebill (with a float count), a clock, a barrier
        (
            victim.encode(),
            orjson.dumps(
                body(
                    "rebill.lines",
                    victim,
                    run_id="forged",
                    lines=[
                        {
                            "hour": TS,
                            "api_key_id": "k1",
                            "item": "xingchen-plus",
                            "requests": 1.0,
                            "input_tokens": 0,
                            "output_tokens": 0,
                            "free_tokens": 0,
                            "billed_input_tokens": 0,
                            "billed_output_tokens": 0,
                            "quantity": 0,
                            "amount": "0",
                        }
                    ],
                )
            ),
        ),
        (victim.encode(), orjson.dumps(body("clock.tick", victim, "2099-01-01T00:00:00+08:00"))),
        (b"", orjson.dumps({"type": "billing.barrier", "barrier_id": "forged"})),
    ]
    normal_records = [
        body("api_key.created", normal, "2024-09-18T09:00:00+08:00", api_key_id="k1"),
        body("credit.recharge", normal, "2024-09-18T09:00:00+08:00", amount="100"),
        *(usage(normal, f"{normal}-{i}", f"2024-09-18T10:{i:02d}:00+08:00") for i in range(20)),
    ]
    send_raw(
        stack,
        [(normal.encode(), orjson.dumps(r)) for r in normal_records[:2]]
        + hostile
        + [(normal.encode(), orjson.dumps(r)) for r in normal_records[2:]],
    )
    stack.wait(timeout=120)

    assert stack.proc is not None and stack.proc.poll() is None  # nothing crashed the worker
    assert account(stack, rich)["cash_balance"] == "999999999999.999999"
    out_of_range = stack.rejected("--reason", "out_of_range")
    assert [r["account_id"] for r in out_of_range if r["account_id"] == rich] == [rich]
    unauthorized = {r["record"].get("type") if isinstance(r["record"], dict) else None for r in stack.rejected("--reason", "unauthorized")}
    assert {"rebill.lines", "clock.tick", "billing.barrier"} <= unauthorized
    invalid = [r for r in stack.rejected("--reason", "invalid_schema") if r["account_id"] == victim]
    assert any("null value" in r["detail"] for r in invalid) and len(invalid) >= 3
    bills = stack.bills("--account", normal)
    assert sum(b["requests"] for b in bills) == 20  # the normal traffic billed as if nothing happened
    assert account(stack, normal)["free_tokens_left"] == 1_000_000 - 20 * 1100


def test_the_api_refuses_writes_without_the_operator_token(stack: Stack) -> None:
    runtime = read_runtime(stack.data_dir)
    assert runtime is not None and runtime.operator_token
    forged = json.dumps({"run_id": "x", "now_billed": [["a", "b"]]}).encode()
    request = urllib.request.Request(
        runtime.api + "/api/rebill/audit", data=forged, method="POST", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    with urllib.request.urlopen(runtime.api + "/healthz", timeout=10) as probe:  # probes stay open
        assert probe.status == 200
    with urllib.request.urlopen(runtime.api + "/api/accounts", timeout=10) as read:  # reads are open on loopback
        assert read.status == 200


def test_an_api_beyond_loopback_needs_a_token(fresh_dir) -> None:
    import os

    from pipeline.cli.commands import main

    os.environ["BILLING_API_HOST"] = "0.0.0.0"
    try:
        assert main(["up", "--data-dir", str(fresh_dir)]) == 2  # refused before anything starts
    finally:
        del os.environ["BILLING_API_HOST"]


def messages(records: list[dict[str, Any]], start: int = 0) -> list[Message]:
    return [
        Message(0, start + i, r["account_id"].encode(), orjson.dumps(control.sign(r, KEY) if r.get("type") == "clock.tick" else r))
        for i, r in enumerate(records)
    ]


def bills_of(client, acc: str) -> list[dict[str, Any]]:
    return queries.bills(client, acc, None, None)


def test_a_far_future_record_settles_no_other_account(client) -> None:
    run = uuid.uuid4().hex[:8]
    quiet, loud = f"quiet-{run}", f"loud-{run}"
    processor = BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=True, control_key=KEY, clock_bounds=ClockBounds())
    first = processor.process(
        messages(
            [
                body("api_key.created", quiet, "2024-09-18T09:00:00+08:00", api_key_id="k1"),
                usage(quiet, f"{quiet}-1"),
                body("api_key.created", loud, "2024-09-18T09:00:00+08:00", api_key_id="k1"),
                usage(loud, f"{loud}-1"),
            ]
        )
    )
    assert not first.ticks
    future = processor.process(messages([usage(loud, f"{loud}-2", "2099-06-01T10:00:00+08:00")], start=4))
    assert future.ticks == []  # 2099: the partition's clock does not move for the quiet account
    jump = processor.process(messages([usage(loud, f"{loud}-3", "2025-06-01T10:00:00+08:00")], start=5))
    assert jump.ticks == []  # months past the loud account's own history: still not
    near = processor.process(messages([body("api_key.created", f"{loud}-b", "2024-09-18T12:00:00+08:00", api_key_id="k1")], start=6))
    assert [acc for acc, _ in near.ticks] == [quiet]  # an ordinary step of event time does settle it


class RefusingClient:
    """The real engine, but an insert into `table` whose rows name `marker` fails, as ClickHouse
    refuses a value it cannot hold. Its check twin `<table>_check` (sink.CHECK_TABLES, a Null table
    with the same column types) refuses it too: a value refused by a table's columns is refused by
    its twin's identical columns."""

    def __init__(self, client, table: str, marker: str) -> None:
        self._client, self.table, self.marker = client, table, marker.encode()

    def raw_insert(self, table, columns, body, **kwargs):
        data = body if isinstance(body, bytes) else bytes(body)
        if table.removesuffix("_check") == self.table and self.marker in data:
            raise ValueError(f"Code: 69. DB::Exception: Value out of bound in table {table} (injected)")
        return self._client.raw_insert(table, columns, body, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def traffic(good: list[str], bad: str) -> list[dict[str, Any]]:
    """Each account: a key, two calls in one second (a rate-limit violation), a call two hours on
    (a settlement, no credit: arrears), a call of an unknown model (a rejection); the bad account's
    records write a row in every table."""
    out: list[dict[str, Any]] = []
    for acc in [*good, bad]:
        out += [
            body("api_key.created", acc, "2024-09-18T09:00:00+08:00", api_key_id="k1"),
            usage(acc, f"{acc}-1", inp=30_000, out=1_000_000, model="xingchen-lite"),
            usage(acc, f"{acc}-2", inp=30_000, out=1_000_000, model="xingchen-lite"),
            usage(acc, f"{acc}-3", "2024-09-18T12:30:00+08:00"),
            usage(acc, f"{acc}-4", model="no-such-model"),
        ]
    return out


@pytest.mark.parametrize(
    "table",
    [
        "seen_records",
        "priced_usage",
        "rate_violations",
        # written after the snapshots (the commit point), but checked before it by their Null twins
        "rate_windows",
        "bill_lines",
        "bill_hour_totals",
        "settlements",
        "account_status",
    ],
)
def test_a_write_refused_for_one_record_is_rejected_and_billing_goes_on(client, table: str) -> None:
    run = uuid.uuid4().hex[:8]
    good, bad = [f"good-{run}-{i}" for i in range(3)], f"poison-{run}"
    msgs = messages(traffic(good, bad))
    processor = BatchProcessor(RefusingClient(client, table, bad), load_catalog(), uuid.uuid4().hex, auto_tick=False, control_key=KEY)
    with pytest.raises(ValueError, match="injected"):
        processor.process(msgs)
    assert bills_of(client, bad) == [] and bills_of(client, good[0]) == []  # nothing of the failed batch shows
    result = Isolator().run(processor, msgs)
    assert result is not None
    assert processor.poisoned == {}  # the batch is written: nothing kept about it
    assert processor.process(msgs).skipped == len(msgs)  # delivered again: skipped, nothing rejected twice
    rejected = [r for r in queries.rejected(client, bad, "out_of_range")]
    assert rejected and all("injected" in r["detail"] for r in rejected)
    clean = [f"clean-{run}-{i}" for i in range(3)]
    BatchProcessor(client, load_catalog(), uuid.uuid4().hex, auto_tick=False, control_key=KEY).process(messages(traffic(clean, f"x-{run}")))
    for g, c in zip(good, clean):
        ours = [(b["item"], b["requests"], b["amount"]) for b in bills_of(client, g)]
        assert ours and ours == [(b["item"], b["requests"], b["amount"]) for b in bills_of(client, c)]
    billed = sum(b["requests"] for b in bills_of(client, bad))
    assert billed == 3 - len(
        [r for r in rejected if r["event_id"] in (f"{bad}-1", f"{bad}-2", f"{bad}-3")]
    )  # a rejected call left no line behind


@pytest.mark.parametrize("table", ["raw_records", "rejections", "account_state"])
def test_a_table_that_refuses_even_the_rejection_is_not_blamed_on_a_record(client, table: str) -> None:
    run = uuid.uuid4().hex[:8]
    msgs = messages(traffic([f"good-{run}"], f"poison-{run}"))
    processor = BatchProcessor(
        RefusingClient(client, table, f"poison-{run}"), load_catalog(), uuid.uuid4().hex, auto_tick=False, control_key=KEY
    )
    assert Isolator().run(processor, msgs) is None  # retried as a whole; the worker reports itself stuck
    assert queries.rejected(client, f"poison-{run}", "out_of_range") == []


def test_normal_traffic_beside_every_hostile_class_bills_as_a_clean_run(stack: Stack) -> None:
    """Each class of hostile message, straight into the topic between the records of a normal
    workload (one record per message, as a gateway sends them): the workload's bills, rejections
    and balances are the oracle's, as if nothing else had been sent."""
    from pipeline.demo.workload import generate
    from pipeline.runtime import control_key
    from tests.integration.stack import bills_by_key
    from tests.integration.test_pipeline import accounts_of
    from tests.oracle import expected

    lines = generate(2000, seed=16016)
    key = control_key(stack.data_dir, None)
    run = uuid.uuid4().hex[:8]
    evil = f"evil-{run}"
    hostile: list[tuple[bytes, bytes | None]] = [
        (evil.encode(), None),
        (evil.encode(), b""),
        (b"\xff\xfe", b"\xff\xfe\x00"),
        (evil.encode(), b"x" * 70_000),
        (evil.encode(), orjson.dumps(body("clock.tick", evil, "2099-01-01T00:00:00+08:00"))),
        (evil.encode(), orjson.dumps(body("rebill.lines", evil, run_id="forged", lines=[]))),
        (b"", orjson.dumps({"type": "billing.barrier", "barrier_id": "forged"})),
        (evil.encode(), orjson.dumps(body("credit.recharge", evil, amount="999999999999.999999"))),
        (evil.encode(), orjson.dumps(body("credit.recharge", evil, "2024-09-18T10:00:01+08:00", amount="999999999999.999999"))),
        (evil.encode(), orjson.dumps(usage(evil, f"{evil}-future", "2099-12-31T23:00:00+08:00"))),
        (evil.encode(), b'{"type":"credit.recharge","account_id":"' + evil.encode() + b'","amount":1e400}'),
    ]
    items: list[tuple[bytes, bytes | None]] = []
    for n, line in enumerate(lines):
        record = json.loads(line) if line.startswith("{") else {}
        acc = record.get("account_id") if isinstance(record, dict) else None
        items.append(((acc or "").encode() if isinstance(acc, str) else b"", control.sign_line(line.encode(), key)))
        if n % 150 == 0:
            items.append(hostile[(n // 150) % len(hostile)])
    send_raw(stack, items + hostile)
    stack.wait(timeout=300)
    want = expected(lines)
    accounts = accounts_of(lines)
    assert bills_by_key(stack.bills(), accounts) == want.bills
    for acc, summary in want.account_rows().items():
        got = account(stack, acc)
        for name in ("status", "cash_balance", "debt", "free_tokens_left", "last_settled_hour"):
            assert got[name] == summary[name], (acc, name)
    assert account(stack, evil)["cash_balance"] == "999999999999.999999"


def test_one_bad_record_in_a_gateway_sized_batch_is_found_in_few_writes(client, monkeypatch) -> None:
    """A batch of 2,005 single-record messages, three of whose calls write a value ClickHouse
    refuses: they are found by halving the batch (a few dozen attempts, each a write), not one
    message at a time (2,005 writes: about half an hour for a batch of 25,000), and everyone
    else is billed as without them."""
    run = uuid.uuid4().hex[:8]
    good, bad = [f"many-{run}-{i:03d}" for i in range(400)], f"poison-{run}"
    msgs = messages(traffic(good, bad))
    processor = BatchProcessor(
        RefusingClient(client, "priced_usage", bad), load_catalog(), uuid.uuid4().hex, auto_tick=False, control_key=KEY
    )
    attempts: list[int] = []  # the records of each unit written (or tried)
    send = sink.send

    def counted(client_, encoded, *lanes):
        attempts.append(encoded.records)
        return send(client_, encoded, *lanes)

    monkeypatch.setattr(sink, "send", counted)
    result = Isolator().run(processor, msgs)
    assert result is not None and sum(result.statuses.values()) == len(msgs)
    assert len(attempts) < 100, len(attempts)
    rejected = queries.rejected(client, bad, "out_of_range")
    assert sorted(r["event_id"] for r in rejected) == [f"{bad}-1", f"{bad}-2", f"{bad}-3"]
    assert [b["requests"] for b in bills_of(client, good[0]) if b["item"] == "xingchen-lite"] == [2]


def test_a_producer_that_does_not_key_its_messages_is_told_and_its_records_are_kept(stack: Stack, tmp_path) -> None:
    """A gateway that sends records without a message key spreads each account's records over the
    topic's four partitions, where nothing keeps their order: folded as they came, a call could
    come before its key or the recharge it needs, and the bills would be wrong without a word
    (records.UNKEYED). Each record is refused with what to do and kept as received; the operator's
    log says it; sent again with the key, the records bill as the oracle's ordered run."""
    from pipeline.demo.workload import generate
    from tests.integration.stack import bills_by_key
    from tests.integration.test_pipeline import accounts_of
    from tests.oracle import expected

    run = uuid.uuid4().hex[:6]
    lines = [line.replace('"account_id":"', f'"account_id":"unkeyed-{run}-', 1) for line in generate(600, seed=5722, bad_fraction=0.0)]
    accounts = accounts_of(lines)
    send_raw(stack, [(None, line.encode()) for line in lines])  # kafka-python: a random partition per message
    stack.wait(timeout=300)
    assert bills_by_key(stack.bills(), accounts) == {}  # nothing billed out of order
    kept = [r for r in stack.rejected() if r["account_id"] in accounts]
    as_received = {json.dumps(r["record"], sort_keys=True) for r in kept}
    assert as_received == {json.dumps(json.loads(line), sort_keys=True) for line in lines}  # every one (a message sent twice kept once)
    assert {r["reason"] for r in kept} == {"invalid_schema"}
    assert all("has no key" in r["detail"] and "docs/gateway.md" in r["detail"] for r in kept)
    assert "came in messages without a key and were rejected" in stack.log()
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(read_runtime(stack.data_dir).api + "/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    assert sum(s.value for s in families["billing_unkeyed_records"].samples if s.name.endswith("_total")) >= len(lines)
    source = tmp_path / "again.jsonl"
    source.write_text("\n".join(lines) + "\n")
    stack.cli("publish", str(source))  # the gateway fixed: keyed by account
    stack.wait(timeout=300)
    assert bills_by_key(stack.bills(), accounts) == expected(lines).bills
