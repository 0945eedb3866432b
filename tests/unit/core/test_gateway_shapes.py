"""The bench's gateway-shaped workloads (bench/gateway.py): what issue 18 asks them to look like."""

from __future__ import annotations

from collections import Counter

import orjson

from bench import gateway
from pipeline.core.records import Invalid, Usage, parse_record


def test_one_record_per_message_mostly_usage_from_every_account_with_a_zipf_head() -> None:
    shape = gateway.Shape("t", accounts=2000, records=4000)
    messages = list(gateway.traffic(shape))
    assert len(messages) == 4000
    records = [parse_record(value, key.decode()) for key, value in messages]
    assert not any(value.startswith(b"\x1e") for _, value in messages)  # no framing
    assert all(record.account_id == key.decode() for (key, _), record in zip(messages, records))
    usage = sum(isinstance(r, Usage) or (isinstance(r, Invalid) and r.kind == "usage") for r in records)
    assert usage / len(records) >= 0.9
    per_account = Counter(key for key, _ in messages)
    assert len(per_account) > 0.9 * shape.accounts  # a long tail: nearly every account calls
    top = per_account.most_common(1)[0][1]
    assert top > 50 * sorted(per_account.values())[len(per_account) // 2]  # and a few heavy ones


def test_each_account_calls_in_time_order_after_its_key_and_credit() -> None:
    shape = gateway.Shape("t", accounts=300, records=900)
    setup = {key: value for key, value in gateway.setup_messages(shape)}
    assert len(setup) == 300
    kinds = [orjson.loads(part[1:]).get("type") for part in setup[shape.account(0).encode()].split(b"\n") if part]
    assert kinds[:2] == ["api_key.created", "credit.recharge"]
    last: dict[bytes, str] = {}
    sent: set[bytes] = set()
    for key, value in gateway.traffic(shape):
        ts = orjson.loads(value)["timestamp"]
        assert ts >= "2024-09-18T08:00:00"  # after the setup's key and credit (07:00)
        if value in sent:  # a re-delivery repeats an earlier call, with its earlier time
            continue
        sent.add(value)
        assert ts >= last.get(key, ts)  # otherwise each account's calls come in time order
        last[key] = ts
