"""API keys (BILLING_RULES §7): log-order creation, revocation time, the 3-active-key limit."""

from helpers import ACCOUNT, NO_QUOTA, Account, D, key_created, key_revoked, us, usage

from pipeline.core.facts import APPLIED, BILLED, REJECTED
from pipeline.core.keys import key_valid_for_call, keys_not_revoked_by
from pipeline.core.state import AccountState, KeyState


def reason(outcome):
    assert outcome.status == REJECTED, outcome
    return outcome.rejection.reason


# ---- the pure helpers


def test_key_state_active_at():
    key = KeyState(created_us=100, revoked_us=200)
    assert key.active_at(199)
    assert not key.active_at(200)
    assert not key.active_at(201)
    assert KeyState(created_us=100).active_at(10**18)


def test_key_valid_for_call_ignores_creation_time():
    state = AccountState(ACCOUNT, keys={"k": KeyState(created_us=1000, revoked_us=2000)})
    assert key_valid_for_call(state, "k", 500)  # earlier than its creation record's timestamp
    assert key_valid_for_call(state, "k", 1999)
    assert not key_valid_for_call(state, "k", 2000)
    assert not key_valid_for_call(state, "other", 500)


def test_keys_not_revoked_by():
    state = AccountState(
        ACCOUNT,
        keys={
            "a": KeyState(0),
            "b": KeyState(0, revoked_us=100),
            "c": KeyState(0, revoked_us=200),
        },
    )
    assert keys_not_revoked_by(state, 99) == 3
    assert keys_not_revoked_by(state, 100) == 2
    assert keys_not_revoked_by(state, 200) == 1


# ---- through the fold


def test_key_created_just_before_use_is_valid_even_if_timestamped_later():
    acct = Account(NO_QUOTA, keys=())
    assert acct.feed(key_created("k1", ts="2024-06-07T10:00:00.200+08:00")).status == APPLIED
    out = acct.feed(usage("e1", key="k1", ts="2024-06-07T10:00:00+08:00", input_tokens=1000, output_tokens=0))
    assert out.status == BILLED
    assert out.priced.api_key_id == "k1"
    assert out.priced.token_amount == D("0.004000")


def test_call_before_the_creation_record_is_rejected():
    acct = Account(keys=())
    assert reason(acct.feed(usage("e1", key="k1"))) == "invalid_api_key"
    acct.feed(key_created("k1"))
    assert acct.feed(usage("e2", key="k1")).status == BILLED


def test_unknown_key():
    acct = Account()
    out = acct.feed(usage("e1", key="not-a-key"))
    assert reason(out) == "invalid_api_key"
    assert "not-a-key" in out.rejection.detail


def test_key_of_another_account_is_unknown():
    mine, theirs = Account(account="acct-a", keys=("ka",)), Account(account="acct-b", keys=("kb",))
    assert reason(mine.feed(usage("e1", key="kb", account="acct-a"))) == "invalid_api_key"
    assert theirs.feed(usage("e1", key="kb", account="acct-b")).status == BILLED


def test_revocation_at_or_before_the_call_rejects_it():
    acct = Account(keys=("k1",))
    acct.feed(key_revoked("k1", ts="2024-06-07T12:00:00+08:00"))
    assert reason(acct.feed(usage("at", key="k1", ts="2024-06-07T12:00:00+08:00"))) == "invalid_api_key"
    assert reason(acct.feed(usage("after", key="k1", ts="2024-06-07T12:00:00.000001+08:00"))) == "invalid_api_key"
    assert reason(acct.feed(usage("utc", key="k1", ts="2024-06-07T04:00:00Z"))) == "invalid_api_key"


def test_a_late_call_made_before_the_revocation_is_billed():
    acct = Account(NO_QUOTA, keys=("k1",))
    acct.feed(key_revoked("k1", ts="2024-06-07T12:00:00+08:00"))
    out = acct.feed(usage("late", key="k1", ts="2024-06-07T11:59:59.999999+08:00", input_tokens=1000, output_tokens=0))
    assert out.status == BILLED
    assert acct.line("2024-06-07T11:00:00+08:00", "xingchen-base", key="k1").amount == D("0.004000")


def test_fourth_active_key_is_refused_and_stays_unknown():
    acct = Account(keys=("k1", "k2", "k3"))
    out = acct.feed(key_created("k4", ts="2024-06-07T09:00:00+08:00"))
    assert reason(out) == "api_key_limit"
    r = out.rejection
    assert (r.kind, r.event_id, r.ts_us) == ("api_key.created", "", us("2024-06-07T09:00:00+08:00"))
    assert r.record_id.startswith("#api_key.created:")
    assert set(acct.state.keys) == {"k1", "k2", "k3"}
    assert reason(acct.feed(usage("e1", key="k4"))) == "invalid_api_key"


def test_after_a_revocation_a_new_key_can_be_created():
    acct = Account(keys=("k1", "k2", "k3"))
    acct.feed(key_revoked("k1", ts="2024-06-07T09:00:00+08:00"))
    # created at the very instant of the revocation: k1 is revoked "at or before" it
    assert acct.feed(key_created("k4", ts="2024-06-07T09:00:00+08:00")).status == APPLIED
    assert acct.feed(usage("e1", key="k4")).status == BILLED
    # now 3 active again
    assert reason(acct.feed(key_created("k5", ts="2024-06-07T09:30:00+08:00"))) == "api_key_limit"


def test_a_creation_timestamped_before_the_revocation_still_counts_the_old_key():
    acct = Account(keys=("k1", "k2", "k3"))
    acct.feed(key_revoked("k1", ts="2024-06-07T09:00:00+08:00"))
    assert reason(acct.feed(key_created("k4", ts="2024-06-07T08:59:59+08:00"))) == "api_key_limit"


def test_refused_creation_record_claims_its_identity():
    acct = Account(keys=("k1", "k2", "k3"))
    body = key_created("k4", ts="2024-06-07T09:00:00+08:00")
    assert reason(acct.feed(body)) == "api_key_limit"
    acct.feed(key_revoked("k1", ts="2024-06-07T08:00:00+08:00"))
    assert acct.feed(body).status == "duplicate"
    assert "k4" not in acct.state.keys


def test_revoking_an_unknown_key_is_rejected():
    acct = Account()
    out = acct.feed(key_revoked("ghost"))
    assert reason(out) == "invalid_api_key"
    assert out.rejection.kind == "api_key.revoked"
    assert out.rejection.event_id == ""
    assert "ghost" not in acct.state.keys
    assert acct.feed(usage("e1")).status == BILLED  # the account's own key is untouched


def test_recreating_a_known_key_is_a_no_op():
    acct = Account(keys=())
    acct.feed(key_created("k1", ts="2024-06-07T08:00:00+08:00"))
    acct.feed(key_revoked("k1", ts="2024-06-07T11:00:00+08:00"))
    again = acct.feed(key_created("k1", ts="2024-06-07T12:00:00+08:00"))
    assert again.status == APPLIED
    assert acct.state.keys["k1"].created_us == us("2024-06-07T08:00:00+08:00")
    assert acct.state.keys["k1"].revoked_us == us("2024-06-07T11:00:00+08:00")
    assert reason(acct.feed(usage("after", key="k1", ts="2024-06-07T12:30:00+08:00"))) == "invalid_api_key"
    assert acct.feed(usage("before", key="k1", ts="2024-06-07T10:30:00+08:00")).status == BILLED


def test_recreating_an_active_key_with_three_active_is_not_a_fourth():
    acct = Account(keys=("k1", "k2", "k3"))
    assert acct.feed(key_created("k2", ts="2024-06-07T09:00:00+08:00")).status == APPLIED
    assert len(acct.state.keys) == 3


def test_revoking_twice_keeps_the_earliest_time():
    acct = Account(keys=("k1", "k2"))
    acct.feed(key_revoked("k1", ts="2024-06-07T12:00:00+08:00"))
    acct.feed(key_revoked("k1", ts="2024-06-07T11:00:00+08:00"))
    assert acct.state.keys["k1"].revoked_us == us("2024-06-07T11:00:00+08:00")
    assert reason(acct.feed(usage("a", key="k1", ts="2024-06-07T11:30:00+08:00"))) == "invalid_api_key"
    acct.feed(key_revoked("k2", ts="2024-06-07T11:00:00+08:00"))
    acct.feed(key_revoked("k2", ts="2024-06-07T12:00:00+08:00"))
    assert acct.state.keys["k2"].revoked_us == us("2024-06-07T11:00:00+08:00")
    assert reason(acct.feed(usage("b", key="k2", ts="2024-06-07T11:30:00+08:00"))) == "invalid_api_key"


def test_keys_are_billed_on_one_account_with_per_key_lines():
    acct = Account(NO_QUOTA, keys=("k1", "k2", "k3"))
    for i, key in enumerate(("k1", "k2", "k3", "k1")):
        acct.feed(usage(f"e{i}", key=key, ts=f"2024-06-07T10:0{i}:00+08:00", input_tokens=1000, output_tokens=0))
    assert acct.line(usage()["timestamp"], "xingchen-base", key="k1").requests == 2
    assert acct.line(usage()["timestamp"], "xingchen-base", key="k2").requests == 1
    assert acct.line(usage()["timestamp"], "xingchen-base", key="k3").amount == D("0.004000")
    assert sum(l.amount for l in acct.state.lines.values()) == D("0.016000")
