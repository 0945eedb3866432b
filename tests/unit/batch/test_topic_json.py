"""The messages a batch publishes: what the API gateway and violation consumers read."""

from decimal import Decimal

import orjson

from pipeline.batch import topic_json
from pipeline.core import control
from pipeline.core.facts import StatusChange, Violation
from pipeline.core.timestamps import parse_ts

T0 = parse_ts("2024-06-07T10:00:00+08:00")


def _violation(account: str, n: int) -> Violation:
    return Violation(account, f"{account}-evt-{n}", T0 + n, "qps", T0, 7, 5, n + 1)


def test_violations_go_per_account_in_messages_of_at_most_500_in_log_order() -> None:
    violated = [_violation("acc-a", n) for n in range(1201)] + [_violation("acc-b", n) for n in range(3)]
    out = topic_json.messages([], violated, [])
    assert [(m.destination, m.account_id) for m in out] == [("violations", "acc-a")] * 3 + [("violations", "acc-b")]
    bodies = [orjson.loads(m.value) for m in out]
    assert [len(b["violations"]) for b in bodies] == [500, 500, 201, 3]
    assert all(b["account_id"] == m.account_id for b, m in zip(bodies, out))
    sent_a = [v["event_id"] for b in bodies[:3] for v in b["violations"]]
    assert sent_a == [f"acc-a-evt-{n}" for n in range(1201)]  # none lost or repeated across the split
    first = bodies[0]["violations"][0]
    assert first == {
        "event_id": "acc-a-evt-0",
        "timestamp": "2024-06-07T10:00:00+08:00",
        "limit": "qps",
        "window_start": "2024-06-07T10:00:00+08:00",
        "observed": 7,
        "allowed": 5,
    }


def test_status_changes_and_ticks_become_one_message_each() -> None:
    change = StatusChange("acc-a", "arrears", Decimal("1.5"), Decimal("0"), T0, 9)
    key = b"k" * 32
    out = topic_json.messages([change], [], [("acc-b", topic_json.tick("acc-b", T0 + 3_600_000_000, key))])
    assert [(m.destination, m.account_id) for m in out] == [("status", "acc-a"), ("input", "acc-b")]
    assert orjson.loads(out[0].value) == {
        "account_id": "acc-a",
        "status": "arrears",
        "debt": "1.500000",
        "cash_balance": "0.000000",
        "as_of": "2024-06-07T10:00:00+08:00",
        "seq": 9,
    }
    tick = orjson.loads(out[1].value)
    assert tick.pop("signature") and tick == {"type": "clock.tick", "account_id": "acc-b", "timestamp": "2024-06-07T11:00:00+08:00"}
    assert control.verify(orjson.loads(out[1].value), key) and not control.verify(orjson.loads(out[1].value), b"x" * 32)


def test_a_quiet_batch_publishes_nothing() -> None:
    assert topic_json.messages([], [], []) == []


def test_a_batch_of_outgoing_messages_holds_their_size_not_a_buffer_each() -> None:
    """A batch keeps its outgoing messages until the broker acknowledges them, on gateway traffic
    tens of thousands: each must hold about its own size, where orjson's output alone held a
    4 KiB buffer per message (20,000 of them 80 MiB)."""
    import tracemalloc

    violated = [_violation(f"acc-{n}", n) for n in range(20_000)]
    changes = [StatusChange(f"acc-{n}", "arrears", Decimal("1.5"), Decimal("0"), T0, n) for n in range(2_000)]
    tracemalloc.start()
    try:
        out = topic_json.messages(changes, violated, [])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out) == 22_000
    assert held < 22_000 * 600  # each value ~230 bytes, its tuple and key
