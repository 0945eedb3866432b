"""Hand-computed cases for the test oracle (tests/oracle.py): if these fail, the oracle is wrong.

Prices used (catalog 2024-09-18.1): lite 0.002 / 0.006 per 1k, base 0.004 / 0.012 from
2024-06-07, max 0.04 / 0.12 from 2024-06-07, plus-v2 from 2024-09-18, longcontext 0.02 / 0.02
always (whitelist only), text_to_image 0.16 per image.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from oracle import expected, hour_str, parse_rfc3339_ns  # noqa: E402

A = "acct-1"
K1, K2, K3, K4 = "k1", "k2", "k3", "k4"


def rec(kind: str, ts: str, account: str = A, **fields) -> str:
    body = {"type": kind, "account_id": account, "timestamp": ts}
    body.update(fields)
    return json.dumps(body)


def use(event_id: str, ts: str, model: str, tin: int, tout: int, key: str = K1, account: str = A, **extra) -> str:
    body = {
        "account_id": account,
        "timestamp": ts,
        "event_id": event_id,
        "api_key_id": key,
        "model": model,
        "input_tokens": tin,
        "output_tokens": tout,
    }
    body.update(extra)
    return json.dumps(body)


def created(key: str, ts: str = "2024-06-07T09:00:00.000+08:00", account: str = A) -> str:
    return rec("api_key.created", ts, account, api_key_id=key)


def line(exp, hour: str, item: str, key: str = K1, account: str = A) -> dict:
    return exp.bills[(account, hour, key, item)]


def test_timestamps_and_hours():
    assert parse_rfc3339_ns("2024-06-07T00:00:00+08:00") == parse_rfc3339_ns("2024-06-06T16:00:00Z")
    assert parse_rfc3339_ns("2024-06-07T00:00:00.000000001+08:00") - parse_rfc3339_ns("2024-06-07T00:00:00+08:00") == 1
    for bad in (
        "2024-06-07T10:00:00",
        "2024-06-31T10:00:00+08:00",
        "2024-06-07T24:00:00+08:00",
        "2024-13-07T10:00:00+08:00",
        "2024-06-07T10:00:60+08:00",
        "2024-06-07T10:00:00+24:00",
        None,
        5,
    ):
        assert parse_rfc3339_ns(bad) is None, bad
    assert hour_str(parse_rfc3339_ns("2024-06-07T02:59:59.999Z")) == "2024-06-07T10:00:00+08:00"
    assert hour_str(parse_rfc3339_ns("2024-06-06T23:30:00-08:00")) == "2024-06-07T15:00:00+08:00"


def test_quota_straddles_a_call():
    lines = [created(K1)]
    # 33 lite calls of 30,000 input tokens: 990,000 free tokens used, nothing billed
    lines += [use(f"e{i}", f"2024-06-07T10:{i:02d}:00.000+08:00", "xingchen-lite", 30_000, 0) for i in range(33)]
    # a console call in between uses no quota and costs nothing
    lines.append(use("c1", "2024-06-07T10:40:00.000+08:00", "xingchen-lite", 5_000, 5_000, channel="console"))
    # straddle: 10,000 input free; 10,000 input + 5,000 output billed
    lines.append(use("s", "2024-06-07T10:45:00.000+08:00", "xingchen-lite", 20_000, 5_000))
    # past the quota: all billed, in the next hour
    lines.append(use("after", "2024-06-07T11:00:00.000+08:00", "xingchen-lite", 1_000, 1_000))
    exp = expected(lines)
    assert exp.rejections == [] and exp.duplicates == 0
    ten = line(exp, "2024-06-07T10:00:00+08:00", "xingchen-lite")
    assert ten == {
        "requests": 35,
        "input_tokens": 33 * 30_000 + 5_000 + 20_000,
        "output_tokens": 10_000,
        "free_tokens": 1_000_000,
        "billed_input_tokens": 10_000,
        "billed_output_tokens": 5_000,
        "quantity": 0,
        "amount": Decimal("0.05"),  # 10,000 x 0.000002 + 5,000 x 0.000006
    }
    eleven = line(exp, "2024-06-07T11:00:00+08:00", "xingchen-lite")
    assert eleven["free_tokens"] == 0 and eleven["amount"] == Decimal("0.008")
    assert exp.free_tokens_used[A] == 1_000_000
    assert exp.straddles == [(A, "s")]


def test_quota_straddle_inside_output():
    lines = [created(K1)]
    lines += [use(f"e{i}", "2024-06-07T12:00:00.000+08:00", "xingchen-lite", 32_000, 0) for i in range(31)]  # 992,000
    lines.append(use("f", "2024-06-07T12:01:00.000+08:00", "xingchen-lite", 6_000, 0))  # 998,000
    lines.append(use("s", "2024-06-07T12:30:00.000+08:00", "xingchen-max", 500, 3_000))  # 500 in + 1,500 out free
    exp = expected(lines)
    maxline = line(exp, "2024-06-07T12:00:00+08:00", "xingchen-max")
    assert (maxline["free_tokens"], maxline["billed_input_tokens"], maxline["billed_output_tokens"]) == (2_000, 0, 1_500)
    assert maxline["amount"] == Decimal("0.18")  # 1,500 x 0.00012
    assert exp.straddles == [(A, "s")]


def test_price_date_boundary():
    lines = [created(K1, "2024-06-01T00:00:00.000+08:00")]
    lines += [
        use("before", "2024-06-06T23:59:59.999+08:00", "xingchen-base", 100, 100),
        use("before-utc", "2024-06-06T15:59:59.999Z", "xingchen-lite", 100, 100),
        use("at", "2024-06-07T00:00:00.000+08:00", "xingchen-base", 100, 100),
        use("at-utc", "2024-06-06T16:00:00Z", "xingchen-base", 100, 100),
        use("v2-before", "2024-09-17T23:59:59.999+08:00", "xingchen-plus-v2", 100, 100),
        use("v2-at", "2024-09-18T00:00:00.000+08:00", "xingchen-plus-v2", 100, 100),
        use("oversized-before", "2024-06-06T22:00:00.000+08:00", "xingchen-max", 9_000, 100),  # no price wins
        rec("whitelist.add", "2024-04-01T00:00:00.000+08:00", model="xingchen-longcontext"),
        use("t2i-early", "2024-04-22T23:59:59.999+08:00", "xingchen-longcontext", 10, 10, plugins={"text_to_image": 1}),
        use("t2i-at", "2024-04-23T00:00:00.000+08:00", "xingchen-longcontext", 10, 10, plugins={"text_to_image": 1}),
    ]
    exp = expected(lines)
    assert exp.rejections == [
        (A, "before", "no_price_in_force"),
        (A, "before-utc", "no_price_in_force"),
        (A, "v2-before", "no_price_in_force"),
        (A, "oversized-before", "no_price_in_force"),
        (A, "t2i-early", "no_price_in_force"),
    ]
    base = line(exp, "2024-06-07T00:00:00+08:00", "xingchen-base")
    assert base["requests"] == 2 and base["free_tokens"] == 400 and base["amount"] == 0
    assert line(exp, "2024-09-18T00:00:00+08:00", "xingchen-plus-v2")["requests"] == 1
    t2i = line(exp, "2024-04-23T00:00:00+08:00", "plugin:text_to_image")
    assert (t2i["requests"], t2i["quantity"], t2i["amount"]) == (1, 1, Decimal("0.16"))


def test_precedence():
    lines = [
        created(K1),
        rec("api_key.revoked", "2024-06-07T09:30:00.000+08:00", api_key_id=K1),
        created(K2),
        use("m", "2024-06-07T10:00:00.000+08:00", "xingchen-nope", 99_999, 0, key="zz", plugins={"bogus": 1}),
        use("p", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 99_999, 0, key="zz", plugins={"bogus": 1}),
        use("i", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 6_501, 0, key="zz"),
        use("c", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 6_500, 1_501, key="zz"),
        use("c-ok", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 6_500, 1_500, key=K2),
        use("lite-big", "2024-06-07T10:00:00.000+08:00", "xingchen-lite", 32_000, 50_000, key=K2),  # lite: no context
        use("lite-over", "2024-06-07T10:00:00.000+08:00", "xingchen-lite", 32_001, 0, key=K2),
        use("w", "2024-06-07T10:00:00.000+08:00", "xingchen-longcontext", 100, 100, key="zz"),
        use("lc-ctx", "2024-06-07T10:00:00.000+08:00", "xingchen-longcontext", 30_000, 2_001, key="zz"),
        use("k", "2024-06-07T10:00:00.000+08:00", "xingchen-plus", 100, 100, key=K1),  # revoked at 09:30
        use("k-late", "2024-06-07T09:29:59.999+08:00", "xingchen-plus", 100, 100, key=K1),  # before the revocation
        use("zero-plugin", "2024-06-07T10:00:00.000+08:00", "xingchen-plus", 1, 1, key=K2, plugins={"bogus": 0}),
    ]
    exp = expected(lines)
    assert exp.rejections == [
        (A, "m", "unknown_model"),
        (A, "p", "unknown_plugin"),
        (A, "i", "input_limit_exceeded"),
        (A, "c", "context_limit_exceeded"),
        (A, "lite-over", "input_limit_exceeded"),
        (A, "w", "not_whitelisted"),
        (A, "lc-ctx", "context_limit_exceeded"),
        (A, "k", "invalid_api_key"),
    ]
    assert line(exp, "2024-06-07T09:00:00+08:00", "xingchen-plus")["requests"] == 1  # the late call
    assert line(exp, "2024-06-07T10:00:00+08:00", "xingchen-plus", key=K2)["requests"] == 1
    assert not any(item.startswith("plugin:") for (_, _, _, item) in exp.bills)


def test_duplicates_and_identity():
    bad = use("x", "2024-06-07T10:00:00.000+08:00", "xingchen-base", -1, 10)
    first = use("d", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 100, 50)
    lines = [
        created(K1),
        created(K1),  # same text: a duplicate delivery
        created(K1, "2024-06-07T09:00:01.000+08:00"),  # another record for a known key: a no-op
        first,
        first,
        use("d", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 101, 50),  # conflicting, first stands
        use("u", "2024-06-07T10:00:00.000+08:00", "xingchen-unknown", 1, 1),
        use("u", "2024-06-07T10:00:00.000+08:00", "xingchen-unknown", 1, 1),  # re-sent rejected: duplicate
        use("u", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 1, 1),  # changed: conflicting
        bad,
        bad,  # invalid records claim no identity: rejected again
        use("x", "2024-06-07T10:05:00.000+08:00", "xingchen-base", 1, 10),  # the fixed one is billed
        rec("credit.recharge", "2024-06-07T10:00:00.000+08:00", amount="10.00"),
        rec("credit.recharge", "2024-06-07T10:00:00.000+08:00", amount="10.00"),
        rec("credit.recharge", "2024-06-07T10:00:00.000+08:00", amount="10.50"),  # another recharge
    ]
    exp = expected(lines)
    assert exp.duplicates == 4
    assert exp.rejections == [
        (A, "d", "conflicting_duplicate"),
        (A, "u", "unknown_model"),
        (A, "u", "conflicting_duplicate"),
        (A, "x", "invalid_schema"),
        (A, "x", "invalid_schema"),
    ]
    base = line(exp, "2024-06-07T10:00:00+08:00", "xingchen-base")
    assert base["requests"] == 2 and base["input_tokens"] == 101 and base["output_tokens"] == 60


def test_keys():
    t = "2024-06-07T09:{:02d}:00.000+08:00".format
    lines = [
        created(K1, t(0)),
        created(K2, t(1)),
        created(K3, t(2)),
        created(K4, t(3)),  # a 4th active key: refused
        use("on-refused", t(4), "xingchen-base", 10, 10, key=K4),
        rec("api_key.revoked", t(5), api_key_id="never-made"),  # unknown key: rejected, never ignored
        rec("api_key.revoked", t(10), api_key_id=K1),
        created(K4, t(9)),  # at 09:09 K1 is still active: refused again (a different record)
        created(K4, t(10)),  # K1 revoked at 09:10: accepted
        use("on-k4", "2024-06-07T08:00:00.000+08:00", "xingchen-base", 10, 10, key=K4),  # timed before creation: log order
        use("on-k1", t(10), "xingchen-base", 10, 10, key=K1),  # revoked at that very time
        use("on-k1-late", t(9), "xingchen-base", 10, 10, key=K1),
        rec("api_key.revoked", t(8), api_key_id=K1),  # revoked twice: the earlier time stands
        use("on-k1-later", "2024-06-07T09:08:30.000+08:00", "xingchen-base", 10, 10, key=K1),
        use("other", t(11), "xingchen-base", 10, 10, key=K2, account="acct-2"),  # not this account's key
    ]
    exp = expected(lines)
    assert exp.rejections == [
        (A, "", "api_key_limit"),
        (A, "on-refused", "invalid_api_key"),
        (A, "", "invalid_api_key"),
        (A, "", "api_key_limit"),
        (A, "on-k1", "invalid_api_key"),
        (A, "on-k1-later", "invalid_api_key"),
        ("acct-2", "other", "invalid_api_key"),
    ]
    assert line(exp, "2024-06-07T08:00:00+08:00", "xingchen-base", key=K4)["requests"] == 1
    assert line(exp, "2024-06-07T09:00:00+08:00", "xingchen-base", key=K1)["requests"] == 1


def test_whitelist_console_and_plugins():
    lines = [
        created(K1),
        use("w0", "2024-06-07T10:00:00.000+08:00", "xingchen-longcontext", 100, 100),
        rec("whitelist.add", "2024-06-07T10:00:01.000+08:00", model="xingchen-longcontext"),
        use(
            "w1",
            "2024-06-07T10:00:02.000+08:00",
            "xingchen-longcontext",
            100,
            100,
            plugins={"text_to_image": 2, "web_search": 3, "function_call": 0},
        ),
        use("w2", "2024-06-07T10:00:03.000+08:00", "xingchen-longcontext", 100, 100, channel="console", plugins={"text_to_image": 4}),
        rec("whitelist.remove", "2024-06-07T10:00:04.000+08:00", model="xingchen-longcontext"),
        use("w3", "2024-06-07T10:00:05.000+08:00", "xingchen-longcontext", 100, 100),
    ]
    exp = expected(lines)
    assert exp.rejections == [(A, "w0", "not_whitelisted"), (A, "w3", "not_whitelisted")]
    h = "2024-06-07T10:00:00+08:00"
    lc = line(exp, h, "xingchen-longcontext")
    assert (lc["requests"], lc["input_tokens"], lc["free_tokens"], lc["billed_input_tokens"], lc["amount"]) == (2, 200, 200, 0, 0)
    t2i = line(exp, h, "plugin:text_to_image")
    assert t2i == {
        "requests": 2,
        "input_tokens": 0,
        "output_tokens": 0,
        "free_tokens": 0,
        "billed_input_tokens": 0,
        "billed_output_tokens": 0,
        "quantity": 6,
        "amount": Decimal("0.32"),
    }  # console images are free
    ws = line(exp, h, "plugin:web_search")
    assert (ws["requests"], ws["quantity"], ws["amount"]) == (1, 3, 0)
    assert (A, h, K1, "plugin:function_call") not in exp.bills


def test_schema_failures():
    lines = [
        created(K1),
        "not json at all",
        "[1, 2]",
        json.dumps({"account_id": 7, "event_id": "n"}),
        use("naive", "2024-06-07T10:00:00", "xingchen-base", 1, 1),
        use("june31", "2024-06-31T10:00:00.000+08:00", "xingchen-base", 1, 1),
        use("float", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 1.5, 1),
        use("extra", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 1, 1, region="x"),
        use("chan", "2024-06-07T10:00:00.000+08:00", "xingchen-base", 1, 1, channel="web"),
        rec("usage.v2", "2024-06-07T10:00:00.000+08:00", event_id="typ"),
        rec("credit.recharge", "2024-06-07T10:00:00.000+08:00", amount=5),
        rec("credit.voucher", "2024-06-07T10:00:00.000+08:00", voucher_id="v", amount="5", expires_at="2024-02-30T00:00:00Z"),
        rec("limits.set", "2024-06-07T10:00:00.000+08:00", qps=-1),
        rec("limits.set", "2024-06-07T10:00:00.000+08:00", qps=3),  # fine
    ]
    exp = expected(lines)
    assert exp.rejections == [
        ("", "", "invalid_schema"),
        ("", "", "invalid_schema"),
        ("", "n", "invalid_schema"),
        (A, "naive", "invalid_schema"),
        (A, "june31", "invalid_schema"),
        (A, "float", "invalid_schema"),
        (A, "extra", "invalid_schema"),
        (A, "chan", "invalid_schema"),
        (A, "typ", "invalid_schema"),
        (A, "", "invalid_schema"),
        (A, "", "invalid_schema"),
        (A, "", "invalid_schema"),
    ]
    assert exp.kinds["limits.set"] == 1 and exp.kinds["api_key.created"] == 1


def test_accounts_are_independent():
    lines = [
        created(K1, account="a"),
        created(K1, account="b"),  # the same key id in another account is another key
        use("e", "2024-06-07T10:00:00.000+08:00", "xingchen-max", 100, 100, account="a"),
        use("e", "2024-06-07T10:00:00.000+08:00", "xingchen-max", 200, 100, account="b"),  # same event_id elsewhere
    ]
    exp = expected(lines)
    assert exp.rejections == [] and exp.duplicates == 0
    assert line(exp, "2024-06-07T10:00:00+08:00", "xingchen-max", account="b")["input_tokens"] == 200
    rows = exp.rows()
    assert [r["account_id"] for r in rows] == ["a", "b"] and rows[0]["amount"] == "0.000000"
