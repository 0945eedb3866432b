"""Rejection reasons of BILLING_RULES §10 and their precedence; model limits and the whitelist."""

import json

import pytest
from helpers import (
    ACCOUNT,
    NO_QUOTA,
    T0,
    Account,
    D,
    touched,
    us,
    usage,
    whitelist_add,
    whitelist_remove,
)

from pipeline.core.facts import BILLED, REASONS, REJECTED

OLD = "2024-06-06T23:59:59+08:00"  # base has no price in force yet


def reason(outcome):
    assert outcome.status == REJECTED, outcome
    return outcome.rejection.reason


def test_reason_codes_in_rule_book_order():
    assert REASONS == (
        "invalid_schema",
        "unauthorized",
        "out_of_range",
        "conflicting_duplicate",
        "unknown_model",
        "unknown_plugin",
        "no_price_in_force",
        "input_limit_exceeded",
        "context_limit_exceeded",
        "not_whitelisted",
        "invalid_api_key",
        "api_key_limit",
    )


def test_rejected_call_changes_no_bill_quota_or_window():
    acct = Account()
    out = acct.feed(usage("e1", model="xingchen-nope"))
    assert reason(out) == "unknown_model"
    assert out.priced is None and touched(acct.state) == ([], []) and out.violations == ()
    assert acct.state.lines == {} and acct.state.windows == {} and acct.state.free_used == 0


def test_rejection_carries_the_record():
    acct = Account()
    body = usage("e1", model="xingchen-nope")
    out = acct.feed(body)
    r = out.rejection
    assert (r.account_id, r.record_id, r.event_id, r.kind, r.reason) == (ACCOUNT, "e1", "e1", "usage", "unknown_model")
    assert r.ts_us == us(T0)
    assert json.loads(r.raw) == body
    assert r.seq == acct.state.seq == 2
    assert "xingchen-nope" in r.detail


def test_unknown_plugin():
    acct = Account()
    assert reason(acct.feed(usage("e1", plugins={"web_search": 1, "teleport": 1}))) == "unknown_plugin"
    assert acct.state.lines == {}


# ---- precedence: each case breaks the named rule and every later one


PRECEDENCE = [
    # unknown model + unknown plugin + old + too big + unknown key
    ("unknown_model", usage("p", model="nope", ts=OLD, input_tokens=40_000, plugins={"teleport": 1}, key="ghost")),
    # unknown plugin + no price + input limit + context + unknown key
    ("unknown_plugin", usage("p", ts=OLD, input_tokens=7_000, output_tokens=2_000, plugins={"teleport": 1}, key="ghost")),
    # no price (model) + input + context + unknown key
    ("no_price_in_force", usage("p", ts=OLD, input_tokens=7_000, output_tokens=2_000, key="ghost")),
    # no price (plugin) on a model priced then, + input limit + not whitelisted + unknown key
    (
        "no_price_in_force",
        usage(
            "p",
            model="xingchen-longcontext",
            ts="2024-04-01T00:00:00+08:00",
            input_tokens=40_000,
            plugins={"text_to_image": 1},
            key="ghost",
        ),
    ),
    # input limit + context + unknown key
    ("input_limit_exceeded", usage("p", input_tokens=6_501, output_tokens=2_000, key="ghost")),
    # input limit + not whitelisted + unknown key
    ("input_limit_exceeded", usage("p", model="xingchen-longcontext", input_tokens=32_001, key="ghost")),
    # context + not whitelisted + unknown key
    ("context_limit_exceeded", usage("p", model="xingchen-longcontext", input_tokens=30_000, output_tokens=2_001, key="ghost")),
    ("context_limit_exceeded", usage("p", input_tokens=6_500, output_tokens=1_501, key="ghost")),
    # not whitelisted + unknown key
    ("not_whitelisted", usage("p", model="xingchen-longcontext", key="ghost")),
    ("invalid_api_key", usage("p", key="ghost")),
]


@pytest.mark.parametrize("expected, body", PRECEDENCE)
def test_first_reason_in_rule_book_order_wins(expected, body):
    acct = Account()
    assert reason(acct.feed(body)) == expected


def test_invalid_schema_beats_conflicting_duplicate():
    acct = Account()
    assert acct.feed(usage("e1")).status == BILLED
    assert reason(acct.feed(usage("e1", input_tokens=-1))) == "invalid_schema"


def test_conflicting_duplicate_beats_every_usage_rule():
    acct = Account()
    assert acct.feed(usage("e1")).status == BILLED
    assert reason(acct.feed(usage("e1", model="nope", ts=OLD, plugins={"teleport": 1}, key="ghost"))) == "conflicting_duplicate"


# ---- invalid_schema through the fold


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2, 3]",
        json.dumps({k: v for k, v in usage().items() if k != "model"}).encode(),
        json.dumps(usage(input_tokens="100")).encode(),
        json.dumps(usage(input_tokens=-1)).encode(),
        json.dumps(usage(ts="2024-06-07T10:00:00")).encode(),
        json.dumps(usage(ts="2024-13-07T10:00:00+08:00")).encode(),
        json.dumps(dict(usage(), type="usage.v2")).encode(),
        json.dumps(usage(surprise=True)).encode(),
    ],
)
def test_invalid_schema_is_kept_with_its_reason(raw):
    acct = Account()
    out = acct.feed_raw(raw)
    assert reason(out) == "invalid_schema"
    r = out.rejection
    assert r.kind == "invalid"
    assert r.ts_us is None
    assert r.raw == raw.decode()
    assert r.record_id.startswith("raw:")
    assert r.seq == acct.state.seq
    assert acct.state.lines == {} and acct.state.free_used == 0 and acct.state.duplicates == 0


def test_invalid_schema_keeps_a_readable_event_id():
    acct = Account()
    assert acct.feed(usage("e-bad", output_tokens=-2)).rejection.event_id == "e-bad"
    assert acct.feed_raw(b"garbage").rejection.event_id == ""


# ---- model limits


@pytest.mark.parametrize(
    "model, inp, out, expected",
    [
        ("xingchen-base", 6_500, 0, None),
        ("xingchen-base", 6_501, 0, "input_limit_exceeded"),
        ("xingchen-base", 6_500, 1_500, None),
        ("xingchen-base", 6_500, 1_501, "context_limit_exceeded"),
        ("xingchen-base", 0, 8_001, "context_limit_exceeded"),
        ("xingchen-plus", 6_501, 0, "input_limit_exceeded"),
        ("xingchen-plus", 6_000, 2_001, "context_limit_exceeded"),
        ("xingchen-max", 6_501, 0, "input_limit_exceeded"),
        ("xingchen-max", 6_500, 1_501, "context_limit_exceeded"),
        ("xingchen-max", 6_500, 1_500, None),
        ("xingchen-plus-v2", 30_000, 2_000, None),
        ("xingchen-plus-v2", 30_001, 0, "input_limit_exceeded"),
        ("xingchen-plus-v2", 30_000, 2_001, "context_limit_exceeded"),
        # lite: no context limit, but the global 32,000 input cap
        ("xingchen-lite", 32_000, 500_000, None),
        ("xingchen-lite", 32_001, 0, "input_limit_exceeded"),
        ("xingchen-lite", 0, 10**9, None),
    ],
)
def test_model_limits(model, inp, out, expected):
    acct = Account(NO_QUOTA)
    outcome = acct.feed(usage("e1", ts="2024-09-18T10:00:00+08:00", model=model, input_tokens=inp, output_tokens=out))
    if expected is None:
        assert outcome.status == BILLED
    else:
        assert reason(outcome) == expected


def test_longcontext_limits_when_whitelisted():
    acct = Account(NO_QUOTA)
    acct.feed(whitelist_add())
    lc = dict(model="xingchen-longcontext")
    assert acct.feed(usage("a", input_tokens=32_000, output_tokens=0, **lc)).status == BILLED
    assert reason(acct.feed(usage("b", input_tokens=32_001, output_tokens=0, **lc))) == "input_limit_exceeded"
    assert reason(acct.feed(usage("c", input_tokens=20_000, output_tokens=12_001, **lc))) == "context_limit_exceeded"
    assert acct.feed(usage("d", ts="2024-06-07T10:00:05+08:00", input_tokens=20_000, output_tokens=12_000, **lc)).status == BILLED


def test_console_calls_are_validated_like_api_calls():
    acct = Account()
    assert reason(acct.feed(usage("a", channel="console", input_tokens=6_501))) == "input_limit_exceeded"
    assert reason(acct.feed(usage("b", channel="console", model="xingchen-longcontext"))) == "not_whitelisted"
    assert reason(acct.feed(usage("c", channel="console", key="ghost"))) == "invalid_api_key"
    assert reason(acct.feed(usage("d", channel="console", ts=OLD))) == "no_price_in_force"
    assert reason(acct.feed(usage("e", channel="console", plugins={"teleport": 1}))) == "unknown_plugin"


# ---- whitelist


def test_longcontext_whitelist_add_and_remove():
    acct = Account(NO_QUOTA)
    lc = dict(model="xingchen-longcontext", input_tokens=1000, output_tokens=1000)
    assert reason(acct.feed(usage("a", ts="2024-06-07T10:00:00+08:00", **lc))) == "not_whitelisted"
    assert acct.feed(whitelist_add(ts="2024-06-07T10:01:00+08:00")).status == "applied"
    ok = acct.feed(usage("b", ts="2024-06-07T10:02:00+08:00", **lc))
    assert ok.status == BILLED and ok.priced.token_amount == D("0.040000")
    assert acct.feed(whitelist_remove(ts="2024-06-07T10:03:00+08:00")).status == "applied"
    assert reason(acct.feed(usage("c", ts="2024-06-07T10:04:00+08:00", **lc))) == "not_whitelisted"
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-longcontext")
    assert (line.requests, line.amount) == (1, D("0.040000"))


def test_whitelisting_another_model_does_not_open_longcontext():
    acct = Account()
    acct.feed(whitelist_add(model="xingchen-max"))
    assert reason(acct.feed(usage("a", model="xingchen-longcontext"))) == "not_whitelisted"


def test_whitelist_is_per_account():
    a, b = Account(account="acct-a"), Account(account="acct-b")
    a.feed(whitelist_add(account="acct-a"))
    assert a.feed(usage("x", model="xingchen-longcontext", account="acct-a")).status == BILLED
    assert reason(b.feed(usage("x", model="xingchen-longcontext", account="acct-b"))) == "not_whitelisted"


def test_whitelist_remove_of_absent_model_is_harmless():
    acct = Account()
    assert acct.feed(whitelist_remove()).status == "applied"
    assert acct.state.whitelist == set()
