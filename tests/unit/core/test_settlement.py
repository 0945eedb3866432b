"""Hand-computed unit tests of hourly settlement (BILLING_RULES §9, docs/interpretations.md
"Settlement"), through `fold.apply` and a few of pipeline/core/settlement.py's functions directly.

Every account starts with its free quota used up, so calls are billed from the first token.
Prices per token: xingchen-max 0.00004 in / 0.00012 out, xingchen-lite 0.000002 / 0.000006.
The grace is the catalog's 10 minutes: hour H closes once the account clock reaches H + 1h10m.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from helpers import ACCOUNT, CATALOG, KEY, Account, D, touched, us

from pipeline.core.facts import Settlement, StatusChange
from pipeline.core.settlement import close_hours, grace_us, settle_amount, status_of
from pipeline.core.settlement import recharge as recharge_state
from pipeline.core.state import AccountState, Voucher
from pipeline.core.timestamps import US_PER_HOUR, hour_start

DAY = "2024-10-08"
GRACE = grace_us(10)
MAX_CALL = D("0.117400")  # 1234 in x 0.00004 = 0.04936, 567 out x 0.00012 = 0.06804


def t(hms: str, day: str = DAY) -> str:
    """'09:15' or '09:15:30.5' on DAY in +08:00."""
    return f"{day}T{hms}{'' if hms.count(':') == 2 else ':00'}+08:00"


def H(hh: str, day: str = DAY) -> int:
    """Start of the billing hour 'hh' on DAY, in microseconds."""
    return us(f"{day}T{hh}:00:00+08:00")


class Acct(Account):
    """An account with a key and its free quota already used: every API token is billed."""

    def __init__(self) -> None:
        self.settlements: list[Settlement] = []
        self.changes: list[StatusChange] = []
        self._n = 0
        super().__init__()  # creates KEY (2024-06-07)
        assert CATALOG.settlement_grace_minutes == 10
        self.state.free_used = CATALOG.free_quota_tokens

    def feed(self, body):
        outcome = super().feed(body)
        assert outcome.status in ("applied", "billed"), outcome
        self.settlements.extend(outcome.settlements)
        self.changes.extend(outcome.status_changes)
        return outcome

    def call(self, ts: str, model: str = "xingchen-max", inp: int = 1234, out: int = 567, **extra):
        self._n += 1
        body = {
            "account_id": ACCOUNT,
            "timestamp": ts,
            "event_id": f"ev-{self._n}",
            "api_key_id": KEY,
            "model": model,
            "input_tokens": inp,
            "output_tokens": out,
        }
        body.update(extra)
        return self.feed(body)

    def tick(self, ts: str):
        return self.feed({"type": "clock.tick", "account_id": ACCOUNT, "timestamp": ts})

    def recharge(self, amount: str, ts: str):
        return self.feed({"type": "credit.recharge", "account_id": ACCOUNT, "timestamp": ts, "amount": amount})

    def voucher(self, voucher_id: str, amount: str, ts: str, expires: str | None = None):
        body = {"type": "credit.voucher", "account_id": ACCOUNT, "timestamp": ts, "voucher_id": voucher_id, "amount": amount}
        if expires is not None:
            body["expires_at"] = expires
        return self.feed(body)

    def rebill(self, ts: str, hour: str, amount: str, item: str = "xingchen-max", run_id: str = "run-1", **counts):
        line = {
            "hour": hour,
            "api_key_id": KEY,
            "item": item,
            "requests": 1,
            "input_tokens": 1234,
            "output_tokens": 567,
            "free_tokens": 0,
            "billed_input_tokens": 1234,
            "billed_output_tokens": 567,
            "quantity": 0,
            "amount": amount,
        }
        line.update(counts)
        return self.feed({"type": "rebill.lines", "account_id": ACCOUNT, "timestamp": ts, "run_id": run_id, "lines": [line]})

    def remaining(self, voucher_id: str) -> Decimal:
        return self.state.vouchers[voucher_id].remaining


def parts_add_up(s: Settlement) -> None:
    assert s.amount == s.voucher_part + s.cash_part + s.debt_added, s


# -- arithmetic -------------------------------------------------------------------------------


def test_settlement_arithmetic_is_exact_to_six_places():
    a = Acct()
    a.recharge("1", t("09:00"))
    first = a.call(t("09:15"))
    assert first.priced.token_amount == MAX_CALL and str(first.priced.token_amount) == "0.117400"
    a.call(t("09:30"), model="xingchen-lite", inp=1, out=1)  # 0.000002 + 0.000006
    assert a.settlements == []
    out = a.tick(t("10:10"))
    (s,) = out.settlements
    assert (s.account_id, s.hour_us, s.kind) == (ACCOUNT, H("09"), "regular")
    assert str(s.amount) == "0.117408"
    assert (s.voucher_part, s.cash_part, s.debt_added) == (D("0"), D("0.117408"), D("0"))
    assert str(s.balance_after) == "0.882592" and s.debt_after == 0
    assert a.state.cash_balance == D("0.882592") and a.state.debt == 0
    assert s.seq == a.state.seq  # settled by the tick, the last record applied
    assert out.status_changes == () and a.state.last_settled_hour == H("09")


# -- when an hour closes ----------------------------------------------------------------------


def test_hour_does_not_close_a_microsecond_before_end_plus_grace():
    a = Acct()
    a.call(t("09:15"))
    assert a.tick(t("10:09:59.999999")).settlements == ()
    assert a.state.open_hours == {H("09"): MAX_CALL} and a.state.last_settled_hour is None
    (s,) = a.tick(t("10:10:00")).settlements
    assert (s.hour_us, s.kind, s.amount) == (H("09"), "regular", MAX_CALL)
    assert a.state.open_hours == {} and a.state.last_settled_hour == H("09")


def test_a_call_stamped_at_end_plus_grace_closes_the_previous_hour_but_not_its_own():
    a = Acct()
    a.call(t("09:15"))
    a.call(t("10:09:59.999"), model="xingchen-lite", inp=1000, out=0)  # 0.002, still hour 10
    assert a.settlements == []
    out = a.call(t("10:10:00"), model="xingchen-lite", inp=0, out=1000)  # 0.006
    assert [(s.hour_us, s.amount) for s in out.settlements] == [(H("09"), MAX_CALL)]
    assert a.state.open_hours == {H("10"): D("0.008000")}


def test_clock_tick_closes_several_idle_hours_oldest_first():
    a = Acct()
    a.call(t("09:50"))
    a.call(t("10:05"), model="xingchen-lite", inp=500, out=500)  # 0.001 + 0.003
    assert a.settlements == []
    out = a.tick(t("11:10"))
    assert [(s.hour_us, s.kind, s.amount) for s in out.settlements] == [
        (H("09"), "regular", MAX_CALL),
        (H("10"), "regular", D("0.004000")),
    ]
    assert [s.debt_after for s in out.settlements] == [MAX_CALL, D("0.121400")]
    assert a.state.last_settled_hour == H("10") and a.state.open_hours == {}
    assert a.tick(t("23:00")).settlements == ()  # nothing left to settle, hours with no activity settle nothing


def test_tick_earlier_than_the_clock_does_not_move_it_back_or_close_anything():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:05"))
    assert a.tick(t("08:00")).settlements == ()
    assert a.state.max_ts_us == us(t("10:05"))


# -- vouchers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vouchers, drawn",
    [
        # (voucher_id, expires_at) in grant order; the voucher that pays the whole call
        ([("z-early", "2024-11-01T00:00:00+08:00"), ("a-late", "2024-12-01T00:00:00+08:00")], "z-early"),
        ([("a-late", "2024-12-01T00:00:00+08:00"), ("z-early", "2024-11-01T00:00:00+08:00")], "z-early"),
        ([("a-never", None), ("z-dated", "2030-01-01T00:00:00+08:00")], "z-dated"),
        ([("v2", "2024-11-01T00:00:00+08:00"), ("v1", "2024-11-01T00:00:00+08:00")], "v1"),
        ([("n2", None), ("n1", None)], "n1"),
    ],
    ids=["earliest-expiry", "earliest-expiry-granted-last", "no-expiry-last", "tie-by-id", "no-expiry-tie-by-id"],
)
def test_voucher_order(vouchers, drawn):
    a = Acct()
    for i, (vid, expires) in enumerate(vouchers):
        a.voucher(vid, "1", t(f"08:0{i}"), expires)
    a.call(t("09:15"))
    (s,) = a.tick(t("10:10")).settlements
    assert (s.voucher_part, s.cash_part, s.debt_added) == (MAX_CALL, 0, 0)
    for vid, _ in vouchers:
        assert a.remaining(vid) == (D("0.882600") if vid == drawn else D("1")), vid


def test_vouchers_are_drained_in_order_across_several():
    a = Acct()
    a.voucher("n", "0.050000", t("08:00"))  # no expiry: last
    a.voucher("b", "0.030000", t("08:01"), "2024-12-01T00:00:00+08:00")
    a.voucher("a", "0.020000", t("08:02"), "2024-12-01T00:00:00+08:00")
    a.voucher("c", "0.010000", t("08:03"), "2024-11-01T00:00:00+08:00")
    a.voucher("m", "0.040000", t("08:04"))  # no expiry, before n by id
    a.call(t("09:15"))
    (s,) = a.tick(t("10:10")).settlements
    assert s.voucher_part == MAX_CALL and s.cash_part == 0 and s.debt_added == 0
    # c 0.01, a 0.02, b 0.03, m 0.04 = 0.10 used in full; n pays the last 0.0174
    assert {v: a.remaining(v) for v in "abcmn"} == {"a": 0, "b": 0, "c": 0, "m": 0, "n": D("0.032600")}


@pytest.mark.parametrize(
    "expires_at, used",
    [
        ("2024-10-08T09:30:00+08:00", False),  # expired inside the hour
        ("2024-10-08T10:00:00+08:00", False),  # expires exactly at the hour's end
        ("2024-10-08T10:00:00.000001+08:00", True),  # one microsecond after the end
        ("2024-10-08T10:05:00+08:00", True),  # expired by the time the hour closes (10:10): still used
    ],
)
def test_voucher_usable_only_if_it_expires_after_the_hour_end(expires_at, used):
    a = Acct()
    a.voucher("v", "1", t("08:00"), expires_at)
    a.call(t("09:15"))
    (s,) = a.tick(t("10:10")).settlements
    if used:
        assert (s.voucher_part, s.debt_added) == (MAX_CALL, 0)
        assert a.remaining("v") == D("0.882600")
        assert a.changes == []
    else:
        assert (s.voucher_part, s.debt_added) == (0, MAX_CALL)
        assert a.remaining("v") == D("1")
        assert [c.status for c in a.changes] == ["arrears"]


def test_partial_voucher_then_cash_then_debt_enters_arrears():
    a = Acct()
    a.voucher("v", "0.05", t("08:00"))
    a.recharge("0.04", t("08:01"))
    a.call(t("09:15"))
    assert a.changes == []
    out = a.tick(t("10:10"))
    (s,) = out.settlements
    assert (s.amount, s.voucher_part, s.cash_part, s.debt_added) == (MAX_CALL, D("0.05"), D("0.04"), D("0.027400"))
    assert (s.debt_after, s.balance_after) == (D("0.027400"), 0)
    parts_add_up(s)
    assert a.remaining("v") == 0
    assert out.status_changes == [StatusChange(ACCOUNT, "arrears", D("0.027400"), D("0"), us(t("10:10")), a.state.seq)]
    assert status_of(a.state) == "arrears"


def test_fully_paid_settlement_publishes_no_status_change():
    a = Acct()
    a.recharge("0.117400", t("08:00"))  # exactly enough
    a.call(t("09:15"))
    out = a.tick(t("10:10"))
    (s,) = out.settlements
    assert (s.cash_part, s.debt_added, s.balance_after, s.debt_after) == (MAX_CALL, 0, 0, 0)
    assert out.status_changes == () and a.changes == []
    assert status_of(a.state) == "active"


# -- arrears and recharges --------------------------------------------------------------------


def test_recharge_in_arrears_pays_debt_first_and_only_clearing_it_flips_to_active():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    assert a.state.debt == MAX_CALL and [c.status for c in a.changes] == ["arrears"]
    partial = a.recharge("0.1", t("10:20"))
    assert partial.status_changes == ()
    assert (a.state.debt, a.state.cash_balance) == (D("0.017400"), 0)
    assert status_of(a.state) == "arrears"
    clearing = a.recharge("0.05", t("10:30"))
    assert clearing.status_changes == [StatusChange(ACCOUNT, "active", D("0"), D("0.032600"), us(t("10:30")), a.state.seq)]
    assert (a.state.debt, a.state.cash_balance) == (0, D("0.032600"))
    # a further recharge while active all goes to cash and changes no status
    assert a.recharge("1", t("10:40")).status_changes == ()
    assert a.state.cash_balance == D("1.032600")
    assert [c.status for c in a.changes] == ["arrears", "active"]


def test_recharge_of_exactly_the_debt_leaves_zero_cash_and_is_active():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    out = a.recharge("0.1174", t("10:20"))
    assert [(c.status, c.debt, c.cash_balance) for c in out.status_changes] == [("active", 0, 0)]


def test_account_in_arrears_across_hours_accumulates_debt_with_one_status_change():
    a = Acct()
    a.call(t("09:15"))
    a.call(t("10:15"))
    a.call(t("11:15"))
    a.tick(t("12:10"))
    assert [(s.hour_us, s.kind, s.debt_added, s.debt_after) for s in a.settlements] == [
        (H("09"), "regular", MAX_CALL, D("0.117400")),
        (H("10"), "regular", MAX_CALL, D("0.234800")),
        (H("11"), "regular", MAX_CALL, D("0.352200")),
    ]
    assert [(c.status, c.debt) for c in a.changes] == [("arrears", MAX_CALL)]
    assert a.state.debt == D("0.352200")
    # cash recharged while in debt never reaches the balance until the debt is gone
    a.recharge("0.3", t("12:20"))
    assert (a.state.debt, a.state.cash_balance, len(a.changes)) == (D("0.052200"), 0, 1)


def test_vouchers_never_pay_debt_but_pay_later_hours():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    granted = a.voucher("v", "1", t("10:20"))
    assert granted.status_changes == () and granted.settlements == ()
    assert a.state.debt == MAX_CALL and a.remaining("v") == 1 and status_of(a.state) == "arrears"
    a.call(t("10:30"))
    (s,) = a.tick(t("11:10")).settlements
    assert (s.voucher_part, s.cash_part, s.debt_added, s.debt_after) == (MAX_CALL, 0, 0, MAX_CALL)
    assert a.remaining("v") == D("0.882600")
    assert [c.status for c in a.changes] == ["arrears"]  # still blocked: only a recharge clears debt


# -- late usage -------------------------------------------------------------------------------


def test_late_usage_for_a_settled_hour_is_an_adjustment_of_just_the_delta():
    a = Acct()
    a.call(t("09:15"))
    a.call(t("10:15"))
    a.tick(t("11:10"))
    assert a.state.last_settled_hour == H("10") and a.state.debt == D("0.234800")
    late = a.call(t("09:40"), model="xingchen-lite", inp=1000, out=1000)  # 0.002 + 0.006
    (s,) = late.settlements
    assert (s.hour_us, s.kind, s.amount, s.debt_added, s.debt_after) == (H("09"), "adjustment", D("0.008000"), D("0.008000"), D("0.242800"))
    assert a.state.last_settled_hour == H("10")
    assert a.state.open_hours == {} and a.state.adjusting == set()
    assert late.status_changes == ()  # already in arrears
    # a second late call is another adjustment, never a second regular settlement
    (s2,) = a.call(t("09:41"), model="xingchen-lite", inp=1, out=0).settlements
    assert (s2.hour_us, s2.kind, s2.amount) == (H("09"), "adjustment", D("0.000002"))
    assert [s.kind for s in a.settlements if s.hour_us == H("09")] == ["regular", "adjustment", "adjustment"]
    # the settlements of hour 9 add up to its bill line
    assert sum(s.amount for s in a.settlements if s.hour_us == H("09")) == MAX_CALL + D("0.008002")


def test_late_usage_paid_from_cash_when_there_is_cash():
    a = Acct()
    a.recharge("1", t("08:00"))
    a.call(t("09:15"))
    a.tick(t("10:10"))
    (s,) = a.call(t("09:59:59.999999")).settlements
    assert (s.kind, s.amount, s.cash_part, s.balance_after) == ("adjustment", MAX_CALL, MAX_CALL, D("0.765200"))


def test_late_usage_for_an_hour_that_is_still_open_is_not_settled_yet():
    a = Acct()
    a.call(t("09:15"))
    a.call(t("10:05"))
    assert a.call(t("09:55"), model="xingchen-lite", inp=1000, out=0).settlements == ()
    (s,) = a.tick(t("10:10")).settlements
    assert (s.kind, s.amount) == ("regular", D("0.119400"))


def test_late_call_for_an_hour_that_never_had_activity_is_a_regular_settlement():
    a = Acct()
    a.call(t("09:15"))
    a.call(t("11:15"))
    a.tick(t("12:10"))
    assert a.state.last_settled_hour == H("11")
    (s,) = a.call(t("10:20"), model="xingchen-lite", inp=1000, out=1000).settlements
    assert (s.hour_us, s.kind, s.amount) == (H("10"), "regular", D("0.008000"))
    assert a.state.last_settled_hour == H("11")
    # and from then on hour 10 was settled: more late usage there is an adjustment
    (s2,) = a.call(t("10:21"), model="xingchen-lite", inp=1000, out=0).settlements
    assert (s2.hour_us, s2.kind, s2.amount) == (H("10"), "adjustment", D("0.002000"))


def test_console_only_hour_settles_zero():
    a = Acct()
    out = a.call(t("09:15"), channel="console")
    assert out.priced.token_amount == 0 and a.state.free_used == CATALOG.free_quota_tokens
    (s,) = a.tick(t("10:10")).settlements
    assert (s.hour_us, s.kind) == (H("09"), "regular")
    assert (s.amount, s.voucher_part, s.cash_part, s.debt_added, s.debt_after) == (0, 0, 0, 0, 0)
    assert a.changes == [] and a.state.last_settled_hour == H("09")


def test_zero_amount_late_console_call_is_an_adjustment_of_zero():
    a = Acct()
    a.recharge("1", t("08:00"))
    a.call(t("09:15"))
    a.tick(t("10:10"))
    (s,) = a.call(t("09:50"), channel="console").settlements
    assert (s.hour_us, s.kind, s.amount, s.cash_part, s.debt_added) == (H("09"), "adjustment", 0, 0, 0)
    assert (s.balance_after, s.debt_after) == (D("0.882600"), 0)
    assert a.changes == []


# -- rebilled lines ---------------------------------------------------------------------------


def test_rebill_lowering_a_cash_paid_hour_refunds_the_delta_to_cash():
    a = Acct()
    a.recharge("1", t("08:00"))
    a.call(t("09:15"))
    a.tick(t("10:10"))
    out = a.rebill(t("12:00"), t("09:00"), "0.100000")
    (s,) = out.settlements
    assert (s.hour_us, s.kind, s.amount) == (H("09"), "adjustment", D("-0.017400"))
    assert (s.voucher_part, s.cash_part, s.debt_added) == (0, D("-0.017400"), 0)
    parts_add_up(s)
    assert (s.balance_after, s.debt_after) == (D("0.900000"), 0)
    assert a.state.lines[(H("09"), KEY, "xingchen-max")].amount == D("0.100000")
    assert out.status_changes == ()


def test_rebill_lowering_an_hour_in_debt_reduces_the_debt_not_cash_and_never_below_zero():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    (s,) = a.rebill(t("12:00"), t("09:00"), "0.050000").settlements
    assert (s.kind, s.amount, s.voucher_part, s.cash_part, s.debt_added) == ("adjustment", D("-0.067400"), 0, 0, D("-0.067400"))
    assert (s.debt_after, s.balance_after) == (D("0.050000"), 0)
    assert [c.status for c in a.changes] == ["arrears"]  # still owes 0.05
    out = a.rebill(t("12:01"), t("09:00"), "0", run_id="run-2")
    (s,) = out.settlements
    assert (s.amount, s.cash_part, s.debt_added, s.debt_after, s.balance_after) == (D("-0.050000"), 0, D("-0.050000"), 0, 0)
    assert a.state.debt == 0 and a.state.cash_balance == 0
    assert [(c.status, c.debt, c.cash_balance) for c in out.status_changes] == [("active", 0, 0)]


def test_rebill_refund_larger_than_the_debt_pays_the_debt_then_cash():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    a.recharge("0.1", t("10:20"))  # debt 0.0174 left
    out = a.rebill(t("12:00"), t("09:00"), "0.020000")  # refund 0.0974
    (s,) = out.settlements
    assert (s.amount, s.cash_part, s.debt_added) == (D("-0.097400"), D("-0.080000"), D("-0.017400"))
    parts_add_up(s)
    assert (s.debt_after, s.balance_after) == (0, D("0.080000"))
    assert a.state.debt >= 0 and a.state.debt == 0
    assert [(c.status, c.debt, c.cash_balance) for c in out.status_changes] == [("active", 0, D("0.080000"))]


def test_rebill_refund_of_a_voucher_paid_hour_goes_to_cash_voucher_not_restored():
    a = Acct()
    a.voucher("v", "1", t("08:00"))
    a.call(t("09:15"))
    a.tick(t("10:10"))
    (s,) = a.rebill(t("12:00"), t("09:00"), "0.017400").settlements
    assert (s.amount, s.voucher_part, s.cash_part, s.debt_added) == (D("-0.100000"), 0, D("-0.100000"), 0)
    assert a.remaining("v") == D("0.882600") and a.state.cash_balance == D("0.100000")


def test_rebill_raising_a_settled_hour_charges_the_delta():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    (s,) = a.rebill(t("12:00"), t("09:00"), "0.200000").settlements
    assert (s.kind, s.amount, s.debt_added, s.debt_after) == ("adjustment", D("0.082600"), D("0.082600"), D("0.200000"))


# -- settlement.py directly -------------------------------------------------------------------


def _state(cash: str = "0", debt: str = "0", vouchers: tuple[tuple[str, str, int | None], ...] = ()) -> AccountState:
    s = AccountState(ACCOUNT, cash_balance=D(cash), debt=D(debt))
    s.vouchers = {vid: Voucher(vid, D(rem), exp) for vid, rem, exp in vouchers}
    return s


def test_settle_amount_skips_expired_and_empty_vouchers():
    end = H("10")
    s = _state(cash="0.01", vouchers=(("a", "0.5", end), ("b", "0", end + 1), ("c", "0.02", end + 1), ("d", "0.03", None)))
    assert settle_amount(s, D("0.1"), end) == (D("0.05"), D("0.01"), D("0.04"))
    assert {v.voucher_id: v.remaining for v in s.vouchers.values()} == {"a": D("0.5"), "b": 0, "c": 0, "d": 0}
    assert (s.cash_balance, s.debt) == (0, D("0.04"))


def test_settle_amount_refund_never_makes_debt_negative():
    s = _state(cash="0", debt="0.01", vouchers=(("v", "0.2", None),))
    assert settle_amount(s, D("-0.05"), H("10")) == (0, D("-0.04"), D("-0.01"))
    assert (s.debt, s.cash_balance, s.vouchers["v"].remaining) == (0, D("0.04"), D("0.2"))


def test_status_of_and_recharge_directly():
    s = _state(debt="0.000001")
    assert status_of(s) == "arrears"
    assert recharge_state(s, D("0.000001"), seq=7) == [StatusChange(ACCOUNT, "active", D("0"), D("0"), 0, 7)]
    assert status_of(s) == "active"
    assert recharge_state(s, D("5"), seq=8) == [] and s.cash_balance == 5


def test_close_hours_directly_at_the_boundary():
    s = _state(cash="1")
    s.open_hours = {H("09"): D("0.3"), H("10"): D("0.2")}
    s.max_ts_us = H("10") + GRACE - 1
    assert close_hours(s, GRACE, seq=3) == ((), ())
    s.max_ts_us = H("10") + GRACE
    settled, changes = close_hours(s, GRACE, seq=4)
    assert [(x.hour_us, x.kind, x.amount, x.cash_part, x.balance_after, x.seq) for x in settled] == [
        (H("09"), "regular", D("0.3"), D("0.3"), D("0.7"), 4)
    ]
    assert changes == [] and s.open_hours == {H("10"): D("0.2")} and s.last_settled_hour == H("09")
    assert hour_start(H("10") + US_PER_HOUR - 1) == H("10")


# -- a rebill that lost a race with a late call ------------------------------------------------


def test_rebill_whose_line_changed_after_it_was_read_is_refused_whole_and_changes_nothing():
    a = Acct()
    a.recharge("1", t("08:00"))
    a.call(t("09:15"))
    a.tick(t("10:10"))
    key = (H("09"), KEY, "xingchen-max")
    read = a.state.lines[key].revision  # what a rebill reads from bill_lines
    a.call(t("09:40"))  # a late call for 09:00 lands before the rebill's lines do
    before = (a.state.lines[key].amount, a.state.cash_balance, a.state.debt, dict(a.state.open_hours))
    out = Account.feed(
        a,
        {
            "type": "rebill.lines",
            "account_id": ACCOUNT,
            "timestamp": t("12:00"),
            "run_id": "run-1",
            "lines": [rebill_line(t("09:00"), "0.100000", base_revision=read)],
        },
    )
    assert out.status == "rejected" and out.rejection.reason == "stale_rebill"
    assert "run the same `billing rebill` again" in out.rejection.detail
    assert (a.state.lines[key].amount, a.state.cash_balance, a.state.debt, dict(a.state.open_hours)) == before
    assert out.settlements == () and touched(a.state)[0] == []
    # the rebill run again reads the new revision and applies
    again = a.rebill(t("12:01"), t("09:00"), "0.200000", run_id="run-2", base_revision=a.state.lines[key].revision)
    assert a.state.lines[key].amount == D("0.200000")
    assert [s.kind for s in again.settlements] == ["adjustment"]


def test_rebill_line_that_did_not_exist_when_read_must_still_not_exist():
    a = Acct()
    a.call(t("09:15"))
    a.tick(t("10:10"))
    out = Account.feed(
        a,
        {
            "type": "rebill.lines",
            "account_id": ACCOUNT,
            "timestamp": t("12:00"),
            "run_id": "run-1",
            "lines": [rebill_line(t("09:00"), "0.100000", base_revision=0)],
        },
    )
    assert out.rejection is not None and out.rejection.reason == "stale_rebill"


def rebill_line(hour: str, amount: str, **extra) -> dict:
    line = {
        "hour": hour,
        "api_key_id": KEY,
        "item": "xingchen-max",
        "requests": 1,
        "input_tokens": 1234,
        "output_tokens": 567,
        "free_tokens": 0,
        "billed_input_tokens": 1234,
        "billed_output_tokens": 567,
        "quantity": 0,
        "amount": amount,
    }
    line.update(extra)
    return line
