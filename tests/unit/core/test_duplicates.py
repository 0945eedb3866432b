"""Duplicate deliveries, conflicting duplicates and which records claim their identity."""

import copy
import json

from helpers import (
    NO_QUOTA,
    Account,
    D,
    key_created,
    limits,
    recharge,
    touched,
    usage,
    voucher,
    whitelist_add,
)

from pipeline.core.facts import BILLED, DUPLICATE, REJECTED


def snapshot(acct):
    s = acct.state
    return (
        copy.deepcopy(s.lines),
        copy.deepcopy(s.windows),
        s.free_used,
        s.cash_balance,
        s.debt,
        copy.deepcopy(s.keys),
        s.limits,
        set(s.whitelist),
        copy.deepcopy(s.vouchers),
    )


def test_identical_redelivery_is_a_counted_duplicate():
    acct = Account(NO_QUOTA)
    first = acct.feed(usage("e1", input_tokens=1000, output_tokens=1000, plugins={"text_to_image": 1}))
    assert first.status == BILLED
    before = snapshot(acct)
    again = acct.feed(usage("e1", input_tokens=1000, output_tokens=1000, plugins={"text_to_image": 1}))
    assert again.status == DUPLICATE
    assert again.rejection is None and again.priced is None
    assert touched(acct.state) == ([], []) and again.violations == ()
    assert acct.state.duplicates == 1
    assert snapshot(acct) == before  # line values and revisions untouched, no qps flag either
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (line.requests, line.amount) == (1, D("0.016000"))
    assert acct.feed(usage("e1", input_tokens=1000, output_tokens=1000, plugins={"text_to_image": 1})).status == DUPLICATE
    assert acct.state.duplicates == 2


def test_duplicate_with_free_quota_does_not_use_it_twice():
    acct = Account()
    acct.feed(usage("e1", input_tokens=1000, output_tokens=1000))
    acct.feed(usage("e1", input_tokens=1000, output_tokens=1000))
    assert acct.state.free_used == 2000


def test_explicit_defaults_equal_absent_ones():
    acct = Account()
    acct.feed(usage("e1"))
    assert acct.feed(dict(usage("e1"), type="usage")).status == DUPLICATE
    assert acct.feed(dict(usage("e1"), channel="api")).status == DUPLICATE
    assert acct.feed(dict(usage("e1"), type="usage", channel="api", plugins={})).status == DUPLICATE
    assert acct.feed(dict(usage("e1"), plugins={"web_search": 0})).status == DUPLICATE
    reordered = dict(reversed(list(usage("e1").items())))
    assert acct.feed(reordered).status == DUPLICATE
    assert acct.feed_raw(json.dumps(usage("e1"), indent=2).encode()).status == DUPLICATE
    assert acct.state.duplicates == 6
    assert acct.line("2024-06-07T10:00:00+08:00", "xingchen-base").requests == 1


def test_conflicting_duplicate_first_one_stands():
    acct = Account(NO_QUOTA)
    acct.feed(usage("e1", input_tokens=1000, output_tokens=0))
    before = snapshot(acct)
    record_ids = set()
    for changed in (
        usage("e1", input_tokens=2000, output_tokens=0),
        usage("e1", input_tokens=1000, output_tokens=0, channel="console"),
        usage("e1", input_tokens=1000, output_tokens=0, ts="2024-06-07T11:00:00+08:00"),
        usage("e1", input_tokens=1000, output_tokens=0, plugins={"web_search": 1}),
    ):
        out = acct.feed(changed)
        assert out.status == REJECTED
        assert out.rejection.reason == "conflicting_duplicate"
        assert out.rejection.event_id == "e1"
        assert json.loads(out.rejection.raw) == changed
        assert not out.claimed
        record_ids.add(out.rejection.record_id)
    # each conflicting copy is kept as its own rejection, none overwriting the billed original
    assert len(record_ids) == 4 and "e1" not in record_ids
    assert snapshot(acct) == before
    assert acct.state.duplicates == 0
    # the original is still the one remembered: re-sending it is a duplicate
    assert acct.feed(usage("e1", input_tokens=1000, output_tokens=0)).status == DUPLICATE
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (line.requests, line.input_tokens, line.amount) == (1, 1000, D("0.004000"))


def test_rejected_records_claim_their_event_id():
    acct = Account()
    out = acct.feed(usage("e1", model="nope"))
    assert out.rejection.reason == "unknown_model"
    assert out.claimed
    again = acct.feed(usage("e1", model="nope"))
    assert again.status == DUPLICATE
    assert acct.state.duplicates == 1
    fixed = acct.feed(usage("e1", model="xingchen-base"))
    assert fixed.status == REJECTED and fixed.rejection.reason == "conflicting_duplicate"
    assert acct.state.lines == {}


def test_rejected_for_a_key_not_yet_known_stays_claimed():
    acct = Account(keys=())
    assert acct.feed(usage("e1")).rejection.reason == "invalid_api_key"
    acct.feed(key_created())
    # a re-delivery is a duplicate, not a second chance (rebilling is how it gets billed)
    assert acct.feed(usage("e1")).status == DUPLICATE
    assert acct.state.lines == {}


def test_invalid_schema_claims_nothing():
    acct = Account()
    bad = usage("e1", input_tokens=-1)
    first = acct.feed(bad)
    assert first.rejection.reason == "invalid_schema"
    assert not first.claimed
    assert acct.feed(bad).rejection.reason == "invalid_schema"  # not a duplicate
    assert acct.state.duplicates == 0
    assert acct.feed_raw(b"junk").rejection.reason == "invalid_schema"
    assert acct.feed_raw(b"junk").rejection.reason == "invalid_schema"
    good = acct.feed(usage("e1"))
    assert good.status == BILLED
    assert acct.line("2024-06-07T10:00:00+08:00", "xingchen-base").requests == 1


def test_event_ids_are_per_account():
    a, b = Account(account="acct-a"), Account(account="acct-b")
    assert a.feed(usage("e1", account="acct-a")).status == BILLED
    assert b.feed(usage("e1", account="acct-b")).status == BILLED


def test_identical_account_records_are_duplicates():
    acct = Account(keys=())
    records = [key_created("k1"), recharge("10"), voucher("v1", "5"), limits(qps=5), whitelist_add()]
    for body in records:
        assert acct.feed(body).status == "applied"
    before = snapshot(acct)
    for body in records:
        assert acct.feed(body).status == DUPLICATE
    assert acct.state.duplicates == len(records)
    assert snapshot(acct) == before
    assert acct.state.cash_balance == D("10")


def test_same_recharge_amount_at_another_time_is_another_recharge():
    acct = Account()
    acct.feed(recharge("10", ts="2024-06-07T10:00:00+08:00"))
    acct.feed(recharge("10", ts="2024-06-07T10:00:01+08:00"))
    assert acct.state.cash_balance == D("20")
    assert acct.state.duplicates == 0


def test_duplicate_still_advances_seq_but_touches_no_line_revision():
    acct = Account()
    acct.feed(usage("e1"))
    seq = acct.state.seq
    acct.feed(usage("e1"))
    assert acct.state.seq == seq + 1
    assert acct.line("2024-06-07T10:00:00+08:00", "xingchen-base").revision == seq
