"""Account records (credit, limits) and the durable snapshot of AccountState."""

from decimal import Decimal

from helpers import NO_QUOTA, Account, D, key_revoked, limits, recharge, us, usage, voucher, whitelist_add

from pipeline.core.state import ZERO, AccountState, KeyState, Voucher
from pipeline.core.windows import Limits


def test_recharge_adds_to_cash():
    acct = Account()
    acct.feed(recharge("10.5"))
    acct.feed(recharge("0.000001", ts="2024-06-07T10:00:01+08:00"))
    assert acct.state.cash_balance == D("10.500001")
    assert acct.state.debt == ZERO


def test_recharge_pays_debt_first():
    acct = Account()
    acct.state.debt = D("5.000000")
    acct.feed(recharge("3"))
    assert (acct.state.debt, acct.state.cash_balance) == (D("2"), D("0"))
    acct.feed(recharge("10", ts="2024-06-07T10:00:01+08:00"))
    assert (acct.state.debt, acct.state.cash_balance) == (D("0"), D("8"))
    acct.feed(recharge("1", ts="2024-06-07T10:00:02+08:00"))
    assert (acct.state.debt, acct.state.cash_balance) == (D("0"), D("9"))


def test_recharge_exactly_the_debt():
    acct = Account()
    acct.state.debt = D("0.123456")
    acct.feed(recharge("0.123456"))
    assert (acct.state.debt, acct.state.cash_balance) == (D("0"), D("0"))


def test_vouchers_first_grant_stands():
    acct = Account()
    acct.feed(voucher("v1", "20", expires_at="2024-07-01T00:00:00+08:00"))
    acct.feed(voucher("v2", "5"))
    acct.feed(voucher("v1", "999", ts="2024-06-07T11:00:00+08:00"))
    assert acct.state.vouchers["v1"] == Voucher("v1", D("20"), us("2024-07-01T00:00:00+08:00"))
    assert acct.state.vouchers["v2"] == Voucher("v2", D("5"), None)
    assert acct.state.cash_balance == ZERO


def test_limits_set_from_defaults():
    acct = Account()
    assert acct.state.limits is None
    acct.feed(limits(qps=3))
    assert acct.state.limits == Limits(3, 60, 1000)
    acct.feed(limits(ts="2024-06-07T10:00:01+08:00", qpm=0, tpm=10))
    assert acct.state.limits == Limits(3, 0, 10)


def test_max_ts_tracks_the_latest_event_time():
    acct = Account()
    acct.feed(usage("a", ts="2024-06-07T12:00:00+08:00"))
    acct.feed(usage("b", ts="2024-06-07T11:00:00+08:00"))
    assert acct.state.max_ts_us == us("2024-06-07T12:00:00+08:00")


def _busy_state():
    acct = Account(NO_QUOTA, keys=("k1", "k2"))
    acct.feed(key_revoked("k2", ts="2024-06-07T12:00:00+08:00"))
    acct.feed(limits(qps=7, tpm=5000))
    acct.feed(whitelist_add())
    acct.feed(whitelist_add(model="xingchen-max"))
    acct.feed(recharge("12.34"))
    acct.feed(voucher("v1", "5.5", expires_at="2024-07-01T00:00:00+08:00"))
    acct.feed(voucher("v2", "1"))
    acct.feed(usage("e1", key="k1"))
    acct.feed(usage("e1", key="k1"))  # a duplicate
    s = acct.state
    s.free_used = 12_345
    s.debt = D("0.000007")
    s.log_epoch, s.log_partition, s.log_offset = "epoch-1", 3, 99
    return acct


def test_durable_state_round_trip():
    acct = _busy_state()
    s = acct.state
    data = s.to_json()
    back = AccountState.from_json(data)
    assert back.account_id == s.account_id
    assert back.seq == s.seq == 11
    assert back.free_used == 12_345
    assert back.keys == {
        "k1": KeyState(us("2024-06-07T00:00:00+08:00")),
        "k2": KeyState(us("2024-06-07T00:00:00+08:00"), us("2024-06-07T12:00:00+08:00")),
    }
    assert back.limits == Limits(7, 60, 5000)
    assert back.whitelist == {"xingchen-longcontext", "xingchen-max"}
    assert back.cash_balance == D("12.34") and isinstance(back.cash_balance, Decimal)
    assert back.debt == D("0.000007")
    # the 10:00 hour closed at the 12:00 revocation: its 0.001 came off the earliest-expiring voucher
    assert back.vouchers == {"v1": Voucher("v1", D("5.499"), us("2024-07-01T00:00:00+08:00")), "v2": Voucher("v2", D("1"), None)}
    assert back.open_hours == {} and back.last_settled_hour == us("2024-06-07T10:00:00+08:00")
    assert back.duplicates == 1
    assert back.max_ts_us == s.max_ts_us
    assert (back.log_epoch, back.log_partition, back.log_offset) == ("epoch-1", 3, 99)
    # working sets are not part of the snapshot
    assert back.seen == {} and back.lines == {} and back.windows == {}
    assert back.to_json() == data
    assert AccountState.from_json(data.decode()).to_json() == data


def test_round_trip_of_a_fresh_state():
    s = AccountState("fresh")
    back = AccountState.from_json(s.to_json())
    assert back.limits is None and back.keys == {} and back.cash_balance == ZERO and back.seq == 0
    assert back.to_json() == s.to_json()


def test_restored_state_bills_on_exactly():
    acct = _busy_state()
    restored = Account(acct.catalog, keys=())
    restored.state = AccountState.from_json(acct.state.to_json())
    out = restored.feed(usage("e2", key="k1", ts="2024-06-07T13:00:00+08:00", input_tokens=1000, output_tokens=1000))
    assert out.priced.token_amount == D("0.016000")
    assert out.priced.seq == acct.state.seq + 1  # revisions keep increasing across restarts
    assert restored.feed(usage("e3", key="k2", ts="2024-06-07T13:00:00+08:00")).rejection.reason == "invalid_api_key"
    restored.feed(recharge("1", ts="2024-06-07T13:00:00+08:00"))
    assert restored.state.debt == ZERO and restored.state.cash_balance == D("13.339993")
    q = Account(keys=())
    q.state = AccountState.from_json(acct.state.to_json())
    q.state.free_used = 999_990
    p = q.feed(usage("e4", key="k1", ts="2024-06-07T14:00:00+08:00", input_tokens=5, output_tokens=10)).priced
    assert (p.free_tokens, p.billed_output_tokens) == (10, 5)


def test_loaded_states_share_their_empty_sets_and_zero_amounts_and_keep_every_value():
    """Memory per cached account (issue 18): an empty whitelist or set of adjusting hours and a zero
    amount are one shared object across loaded states, and a change replaces, never mutates, it."""
    text = AccountState("a", cash_balance=D("3.500000")).to_json()
    first, second = AccountState.from_json(text), AccountState.from_json(text)
    assert first.whitelist is second.whitelist and first.adjusting is second.adjusting
    assert first.debt is second.debt and str(first.debt) == "0.000000"
    assert first.cash_balance == D("3.500000") and str(first.cash_balance) == "3.500000"
    first.whitelist = first.whitelist | {"xingchen-max"}
    assert second.whitelist == set() and AccountState.from_json(first.to_json()).whitelist == {"xingchen-max"}


def test_a_states_hours_are_kept_as_it_changes_and_leave_the_collectors_sight():
    """The hours with lines in memory follow the lines (settlement asks them whether an hour was
    billed before), and after one full collection the collector no longer walks them: each full
    collection walks every cached state and holds Python's lock meanwhile (stream/gcpause.py)."""
    import gc

    from pipeline.core.state import LATEST_HOUR, Line, with_instant

    hour = 3_600_000_000
    state = AccountState("a")
    state.line((hour, "k1", "xingchen-plus"))
    state.line((hour, "k2", "xingchen-plus"))
    state.add_lines({(2 * hour, "k1", "xingchen-plus"): Line(requests=1), (hour, "k3", "xingchen-max"): Line(requests=2)})
    assert sorted(state.line_hours) == [hour, 2 * hour]
    state.keep_lines_between(2 * hour, LATEST_HOUR)
    assert state.line_hours == (2 * hour,) and list(state.lines) == [(2 * hour, "k1", "xingchen-plus")]
    assert with_instant(state.line_hours, 2 * hour) is state.line_hours
    state.line_hours = with_instant(state.line_hours, 5 * hour)  # a new tuple, as the state makes them
    gc.collect()
    assert not gc.is_tracked(state.line_hours)
