"""Rate windows through the fold (BILLING_RULES §6): flagged, still billed, reported as violations."""

from helpers import NO_QUOTA, Account, D, limits, touched, us, usage

from pipeline.core.facts import BILLED, Violation
from pipeline.core.windows import MINUTE, SECOND

S = "2024-06-07T10:00:"  # a minute's prefix


def call(acct, eid, ts, inp=1, out=1, **kw):
    return acct.feed(usage(eid, ts=ts, input_tokens=inp, output_tokens=out, **kw))


def test_second_call_in_a_second_breaks_qps_but_is_billed():
    acct = Account(NO_QUOTA)
    first = call(acct, "a", S + "00+08:00", 100, 100)
    second = call(acct, "b", S + "00.999+08:00", 100, 100)
    assert first.priced.flags == () and first.violations == ()
    assert second.status == BILLED
    assert second.priced.flags == ("qps",)
    assert second.priced.token_amount == D("0.001600")
    assert second.violations == [
        Violation(acct.state.account_id, "b", us(S + "00.999+08:00"), "qps", us(S + "00+08:00"), 2, 1, acct.state.seq)
    ]
    assert acct.line(S + "00+08:00", "xingchen-base").requests == 2


def test_the_next_second_starts_fresh():
    acct = Account(NO_QUOTA)
    call(acct, "a", S + "00.999999+08:00")
    nxt = call(acct, "b", S + "01+08:00")
    assert nxt.priced.flags == ()
    third = call(acct, "c", S + "01.5+08:00")
    assert [v.observed for v in third.violations] == [2]
    assert third.violations[0].window_start_us == us(S + "01+08:00")


def test_qps_counts_across_keys_and_models():
    acct = Account(NO_QUOTA, keys=("k1", "k2"))
    call(acct, "a", S + "05+08:00", key="k1", model="xingchen-lite")
    b = call(acct, "b", S + "05+08:00", key="k2", model="xingchen-max")
    assert b.priced.flags == ("qps",)


def test_tpm_over_1000_tokens_in_a_minute():
    acct = Account(NO_QUOTA)
    a = call(acct, "a", S + "00+08:00", 300, 300)
    b = call(acct, "b", S + "30+08:00", 200, 201)
    assert a.priced.flags == ()
    assert b.priced.flags == ("tpm",)
    (v,) = b.violations
    assert (v.limit, v.observed, v.allowed, v.window_start_us) == ("tpm", 1001, 1000, us(S + "00+08:00"))
    assert (v.event_id, v.ts_us, v.seq) == ("b", us(S + "30+08:00"), acct.state.seq)


def test_exactly_at_the_tpm_limit_is_fine():
    acct = Account(NO_QUOTA)
    call(acct, "a", S + "00+08:00", 500, 0)
    assert call(acct, "b", S + "10+08:00", 0, 500).priced.flags == ()


def test_a_single_big_call_breaks_tpm_alone():
    acct = Account(NO_QUOTA)
    out = call(acct, "a", S + "00+08:00", 6000, 1500)
    assert out.priced.flags == ("tpm",)
    assert out.violations[0].observed == 7500


def test_the_next_minute_starts_fresh():
    acct = Account(NO_QUOTA)
    call(acct, "a", S + "59.9+08:00", 900, 0)
    nxt = call(acct, "b", "2024-06-07T10:01:00+08:00", 900, 0)
    assert nxt.priced.flags == ()
    assert acct.state.windows[(MINUTE, us(S + "00+08:00"))].tokens == 900
    assert acct.state.windows[(MINUTE, us("2024-06-07T10:01:00+08:00"))].tokens == 900


def test_qpm_61st_call_in_a_minute():
    acct = Account(NO_QUOTA)
    acct.feed(limits(qps=100))
    outs = [call(acct, f"e{i}", f"{S}{i % 60:02d}.{i // 60}+08:00", 1, 1) for i in range(61)]
    assert all(o.priced.flags == () for o in outs[:60])
    last = outs[60]
    assert last.priced.flags == ("qpm",)
    (v,) = last.violations
    assert (v.observed, v.allowed, v.window_start_us) == (61, 60, us(S + "00+08:00"))


def test_several_limits_flagged_in_order():
    acct = Account(NO_QUOTA)
    acct.feed(limits(qpm=1))
    call(acct, "a", S + "00+08:00", 600, 0)
    b = call(acct, "b", S + "00+08:00", 600, 0)
    assert b.priced.flags == ("qps", "qpm", "tpm")
    assert [(v.limit, v.observed, v.allowed) for v in b.violations] == [("qps", 2, 1), ("qpm", 2, 1), ("tpm", 1200, 1000)]


def test_limits_set_raises_limits_for_later_calls():
    acct = Account(NO_QUOTA)
    call(acct, "a", S + "00+08:00", 600, 0)
    assert call(acct, "b", S + "00.5+08:00", 600, 0).priced.flags == ("qps", "tpm")
    acct.feed(limits(qps=5, tpm=2000))
    c = call(acct, "c", S + "00.7+08:00", 600, 0)
    assert c.priced.flags == ()  # 3 requests <= 5, 1800 tokens <= 2000
    d = call(acct, "d", S + "00.8+08:00", 300, 0)
    assert d.priced.flags == ("tpm",)
    assert (d.violations[0].observed, d.violations[0].allowed) == (2100, 2000)


def test_partial_limits_set_keeps_other_limits():
    acct = Account(NO_QUOTA)
    acct.feed(limits(tpm=5000))
    acct.feed(limits(qpm=100))
    assert (acct.state.limits.qps, acct.state.limits.qpm, acct.state.limits.tpm) == (1, 100, 5000)
    call(acct, "a", S + "00+08:00", 2000, 0)
    assert call(acct, "b", S + "00+08:00", 2000, 0).priced.flags == ("qps",)


def test_console_calls_are_not_in_rate_windows():
    acct = Account(NO_QUOTA)
    con = call(acct, "c", S + "00+08:00", 5000, 2000, channel="console")
    assert touched(acct.state)[1] == [] and con.violations == () and con.priced.flags == ()
    assert acct.state.windows == {}
    api = call(acct, "a", S + "00+08:00", 100, 100)
    assert api.priced.flags == ()
    assert acct.state.windows[(SECOND, us(S + "00+08:00"))].requests == 1
    assert acct.state.windows[(MINUTE, us(S + "00+08:00"))].tokens == 200


def test_rejected_calls_are_not_in_rate_windows():
    acct = Account(NO_QUOTA)
    call(acct, "bad", S + "00+08:00", 100, 100, key="ghost")
    assert acct.state.windows == {}
    assert call(acct, "a", S + "00+08:00").priced.flags == ()


def test_window_bookkeeping():
    acct = Account(NO_QUOTA)
    call(acct, "a", S + "42.250+08:00", 10, 20)
    sec, minute = (SECOND, us(S + "42+08:00")), (MINUTE, us(S + "00+08:00"))
    assert touched(acct.state)[1] == [sec, minute]
    for key in (sec, minute):
        w = acct.state.windows[key]
        assert (w.requests, w.tokens, w.revision) == (1, 30, acct.state.seq)


def test_late_call_counts_in_its_own_event_time_window():
    acct = Account(NO_QUOTA)
    call(acct, "a", S + "00+08:00", 600, 0)
    call(acct, "b", "2024-06-07T10:05:00+08:00", 10, 0)
    late = call(acct, "late", S + "30+08:00", 600, 0)
    assert late.priced.flags == ("tpm",)
    assert late.violations[0].observed == 1200
