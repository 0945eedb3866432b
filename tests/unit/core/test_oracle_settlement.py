"""Hand-computed settlement cases for the test oracle (tests/oracle.py, BILLING_RULES §9 and
docs/interpretations.md "Settlement"): if these fail, the oracle is wrong.

Money in most cases comes from text_to_image (0.16 per image, never covered by the free token
quota) on calls with 0 tokens, so every amount is a multiple of 0.16. Grace is the catalog's
10 minutes: hour H closes once the account clock reaches H + 1 h + 10 min.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]
for path in (TESTS, TESTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from oracle import ALL_KINDS, KINDS, assert_settlement_totals, expected, parse_rfc3339_ns  # noqa: E402

from pipeline.demo.workload import generate_settlement  # noqa: E402

A = "acct-s"
K = "k1"
DAY = "2024-09-18"
D = Decimal


def t(hhmm: str) -> str:
    """'09:30' or '09:30:15.250' on DAY in +08:00."""
    return f"{DAY}T{hhmm}{'' if hhmm.count(':') == 2 else ':00'}+08:00"


def h(hh: str) -> str:
    return f"{DAY}T{hh}:00:00+08:00"


def rec(kind: str, ts: str, account: str = A, **fields) -> str:
    body = {"type": kind, "account_id": account, "timestamp": ts}
    body.update(fields)
    return json.dumps(body)


def created(ts: str = t("08:00"), account: str = A) -> str:
    return rec("api_key.created", ts, account, api_key_id=K)


def img(event_id: str, ts: str, images: int, account: str = A, **extra) -> str:
    """A lite call with no tokens and `images` text_to_image units: 0.16 x images."""
    body = {
        "account_id": account,
        "timestamp": ts,
        "event_id": event_id,
        "api_key_id": K,
        "model": "xingchen-lite",
        "input_tokens": 0,
        "output_tokens": 0,
        "plugins": {"text_to_image": images},
    }
    body.update(extra)
    return json.dumps(body)


def recharge(ts: str, amount: str, account: str = A) -> str:
    return rec("credit.recharge", ts, account, amount=amount)


def voucher(ts: str, vid: str, amount: str, expires: str | None = None, account: str = A) -> str:
    fields = {"voucher_id": vid, "amount": amount}
    if expires is not None:
        fields["expires_at"] = expires
    return rec("credit.voucher", ts, account, **fields)


def tick(ts: str, account: str = A) -> str:
    return rec("clock.tick", ts, account)


def brief(exp, account: str = A) -> list[tuple]:
    """(hour HH, kind, amount, voucher_part, cash_part, debt_added, debt_after, balance_after)."""
    return [
        (s["hour"][11:13], s["kind"], s["amount"], s["voucher_part"], s["cash_part"], s["debt_added"], s["debt_after"], s["balance_after"])
        for s in exp.settlements
        if s["account_id"] == account
    ]


def check(exp) -> None:
    assert_settlement_totals(exp)
    for s in exp.settlements:
        assert sum((amount for _, amount in s["voucher_uses"]), D(0)) == s["voucher_part"]


# ---------------------------------------------------------------------------------------------


def test_voucher_order_and_expiry():
    lines = [
        created(),
        voucher(t("08:01"), "v-late", "1", expires=t("12:00")),
        voucher(t("08:02"), "v-b", "0.20", expires="2024-09-18T03:00:00Z"),  # 11:00 +08:00, ties with v-a
        voucher(t("08:03"), "v-a", "0.10", expires=t("11:00")),
        voucher(t("08:04"), "v-none", "5"),  # no expiry: last
        voucher(t("08:05"), "v-early", "0.50", expires=t("10:30")),
        voucher(t("08:06"), "v-a", "100", expires=t("23:00")),  # a known voucher_id: no-op
        recharge(t("08:07"), "10"),
        img("e09", t("09:30"), 4),  # 0.64
        img("e10", t("10:20"), 10),  # 1.60; clock 10:20 >= 10:10: hour 09 closes after this record
        img("e11", t("11:05"), 40),  # 6.40; clock 11:05 < 11:10: hour 10 still open
        tick(t("11:10")),  # exactly hour end + grace: hour 10 closes
        tick(t("12:09:59.999")),
        tick(t("12:10")),
    ]
    exp = expected(lines)
    check(exp)
    assert exp.rejections == [] and exp.duplicates == 0
    assert brief(exp) == [
        # hour 09 (ends 10:00): v-early (10:30) 0.50, then v-a before v-b (same expiry, by id)
        ("09", "regular", D("0.64"), D("0.64"), 0, 0, 0, D("10")),
        # hour 10 (ends 11:00): v-a/v-b expire at 11:00, not after it; v-late 1, v-none 0.60
        ("10", "regular", D("1.60"), D("1.60"), 0, 0, 0, D("10")),
        # hour 11 (ends 12:00): v-late expires at 12:00 (and is spent); v-none 4.40 then cash 2.00
        ("11", "regular", D("6.40"), D("4.40"), D("2.00"), 0, 0, D("8.00")),
    ]
    assert [s["voucher_uses"] for s in exp.settlements] == [
        [("v-early", D("0.50")), ("v-a", D("0.10")), ("v-b", D("0.04"))],
        [("v-late", D("1")), ("v-none", D("0.60"))],
        [("v-none", D("4.40"))],
    ]
    # when each closed: the record after which the settlement happened moved the clock to...
    assert [s["at"] for s in exp.settlements] == [parse_rfc3339_ns(t(x)) for x in ("10:20", "11:10", "12:10")]
    summary = exp.accounts[A]
    assert summary["status"] == "active" and summary["cash_balance"] == D("8.00") and summary["debt"] == 0
    assert [(v["voucher_id"], v["remaining"], v["expires_at"]) for v in summary["vouchers"]] == [
        ("v-late", 0, "2024-09-18T12:00:00+08:00"),
        ("v-b", D("0.16"), "2024-09-18T11:00:00+08:00"),  # expired with money left: stays listed
        ("v-a", 0, "2024-09-18T11:00:00+08:00"),
        ("v-none", 0, None),  # 5 - 0.60 - 4.40
        ("v-early", 0, "2024-09-18T10:30:00+08:00"),
    ]
    assert summary["last_settled_hour"] == h("11")
    assert exp.status_changes == []
    rows = exp.account_rows()[A]
    assert rows["cash_balance"] == "8.000000" and rows["vouchers"][1]["remaining"] == "0.160000"
    assert exp.settlement_rows()[2] == {
        "account_id": A,
        "hour": h("11"),
        "kind": "regular",
        "amount": "6.400000",
        "voucher_part": "4.400000",
        "cash_part": "2.000000",
        "debt_added": "0.000000",
        "debt_after": "0.000000",
        "balance_after": "8.000000",
    }


def test_arrears_entry_recharge_during_arrears_and_exit():
    lines = [
        created(),
        recharge(t("09:00"), "1.00"),
        img("a", t("09:10"), 10),  # 1.60
        tick(t("10:10")),  # hour 09: cash 1.00, debt 0.60 -> arrears
        voucher(t("10:15"), "v", "5"),  # vouchers never pay debt
        recharge(t("10:20"), "0.50"),  # debt 0.10: still in arrears
        img("b", t("10:30"), 5),  # 0.80
        recharge(t("10:40"), "2.00"),  # pays 0.10 debt, 1.90 cash -> active
        tick(t("11:10")),  # hour 10: 0.80 from the voucher
    ]
    prefix = expected(lines[:6])
    assert prefix.accounts[A]["status"] == "arrears" and prefix.accounts[A]["debt"] == D("0.10")
    assert prefix.accounts[A]["cash_balance"] == 0
    assert prefix.accounts[A]["vouchers"][0]["remaining"] == D("5")
    exp = expected(lines)
    check(exp)
    assert brief(exp) == [
        ("09", "regular", D("1.60"), 0, D("1.00"), D("0.60"), D("0.60"), 0),
        ("10", "regular", D("0.80"), D("0.80"), 0, 0, 0, D("1.90")),
    ]
    assert exp.status_changes == [(A, "arrears"), (A, "active")]
    assert [(s["status"], s["cause"], s["at"]) for s in exp.status_log] == [
        ("arrears", "regular " + h("09"), parse_rfc3339_ns(t("10:10"))),
        ("active", "recharge", parse_rfc3339_ns(t("10:40"))),
    ]
    summary = exp.accounts[A]
    assert (summary["status"], summary["cash_balance"], summary["debt"]) == ("active", D("1.90"), 0)
    assert summary["vouchers"] == [{"voucher_id": "v", "remaining": D("4.20"), "expires_at": None}]
    (episode,) = exp.arrears_episodes()
    assert (episode["start"], episode["end"]) == (parse_rfc3339_ns(t("10:10")), parse_rfc3339_ns(t("10:40")))


def test_record_is_applied_before_the_hours_it_closes():
    # the recharge at 10:15 moves the clock past 10:10: it is in the balance when hour 09 settles
    lines = [created(), img("a", t("09:10"), 1), recharge(t("10:15"), "1")]
    exp = expected(lines)
    check(exp)
    assert brief(exp) == [("09", "regular", D("0.16"), 0, D("0.16"), 0, 0, D("0.84"))]
    assert exp.status_changes == []
    # a recharge timed earlier than the clock still pays: only log order matters
    lines = [created(), img("a", t("09:10"), 1), tick(t("10:10")), recharge(t("09:00"), "1")]
    exp = expected(lines)
    assert exp.status_changes == [(A, "arrears"), (A, "active")]
    assert exp.accounts[A]["cash_balance"] == D("0.84")


def test_late_events_adjust_settled_hours():
    lines = [
        created(),
        recharge(t("08:30"), "10"),
        img("a", t("09:10"), 2),  # 0.32
        img("b", t("10:15"), 1),  # 0.16; closes hour 09: 0.32
        img("late", t("09:50"), 3),  # hour 09 is settled: adjustment 0.48 right after this record
        img("late", t("09:50"), 3),  # the same delivery again: nothing
        img("late-console", t("09:55"), 5, channel="console"),  # owes nothing: adjustment of 0
        img("late-10", t("10:05"), 1),  # hour 10 is not closed yet: no settlement
        img("old", t("08:30"), 1),  # first activity of hour 08, already past: its regular settlement
        tick(t("11:09:59.999")),
    ]
    prefix = expected(lines)
    check(prefix)
    assert brief(prefix) == [
        ("09", "regular", D("0.32"), 0, D("0.32"), 0, 0, D("9.68")),
        ("09", "adjustment", D("0.48"), 0, D("0.48"), 0, 0, D("9.20")),
        ("09", "adjustment", 0, 0, 0, 0, 0, D("9.20")),
        ("08", "regular", D("0.16"), 0, D("0.16"), 0, 0, D("9.04")),
    ]
    assert prefix.accounts[A]["last_settled_hour"] == h("09")  # the latest hour, not the last settled
    assert prefix.clocks[A] == parse_rfc3339_ns(t("11:09:59.999"))  # late records never move it back
    assert prefix.duplicates == 1
    exp = expected(lines + [tick(t("11:10"))])
    check(exp)
    assert brief(exp)[4:] == [("10", "regular", D("0.32"), 0, D("0.32"), 0, 0, D("8.72"))]
    assert exp.settled_by_account()[A] == D("1.28") == sum(exp.amounts_by_account_hour().values())
    assert exp.accounts[A]["last_settled_hour"] == h("10")
    assert len(exp.adjustments()) == 2


def test_adjustment_in_arrears_adds_debt():
    lines = [
        created(),
        img("a", t("09:10"), 1),
        tick(t("10:10")),  # debt 0.16
        recharge(t("10:20"), "0.16"),  # debt 0, active, cash 0
        img("late", t("09:59:59.999"), 2),  # adjustment 0.32: back into arrears
        voucher(t("10:30"), "v", "1"),
        img("late2", t("09:00"), 1),  # adjustment 0.16 paid by the voucher
    ]
    exp = expected(lines)
    check(exp)
    assert brief(exp) == [
        ("09", "regular", D("0.16"), 0, 0, D("0.16"), D("0.16"), 0),
        ("09", "adjustment", D("0.32"), 0, 0, D("0.32"), D("0.32"), 0),
        ("09", "adjustment", D("0.16"), D("0.16"), 0, 0, D("0.32"), 0),
    ]
    assert exp.status_changes == [(A, "arrears"), (A, "active"), (A, "arrears")]
    assert exp.accounts[A]["status"] == "arrears"
    assert exp.accounts[A]["last_settled_hour"] == h("09")


def test_stays_in_arrears_for_several_hours():
    lines = [
        created(),
        img("e09", t("09:30"), 1),
        img("e10", t("10:30"), 1),  # hour 09: debt 0.16 -> arrears
        img("e11", t("11:30"), 1),  # hour 10: debt 0.32
        voucher(t("11:45"), "v", "0.16"),  # does not pay debt; pays the next settlement
        img("e12", t("12:30"), 1),  # hour 11: from the voucher, debt stays 0.32
        tick(t("13:10")),  # hour 12: debt 0.48
    ]
    exp = expected(lines)
    check(exp)
    assert brief(exp) == [
        ("09", "regular", D("0.16"), 0, 0, D("0.16"), D("0.16"), 0),
        ("10", "regular", D("0.16"), 0, 0, D("0.16"), D("0.32"), 0),
        ("11", "regular", D("0.16"), D("0.16"), 0, 0, D("0.32"), 0),
        ("12", "regular", D("0.16"), 0, 0, D("0.16"), D("0.48"), 0),
    ]
    assert exp.status_changes == [(A, "arrears")]  # one change, however many hours it lasts
    assert exp.accounts[A]["status"] == "arrears" and exp.accounts[A]["debt"] == D("0.48")
    (episode,) = exp.arrears_episodes()
    assert episode["end"] is None and episode["hours"] == [h("10"), h("11"), h("12")]
    done = expected(lines + [recharge(t("13:20"), "0.50")])
    assert done.status_changes == [(A, "arrears"), (A, "active")]
    assert (done.accounts[A]["debt"], done.accounts[A]["cash_balance"]) == (0, D("0.02"))
    (episode,) = done.arrears_episodes()
    assert (episode["start"], episode["end"]) == (parse_rfc3339_ns(t("10:30")), parse_rfc3339_ns(t("13:20")))


def test_zero_amount_hours_still_close():
    lines = [
        created(),
        img("console", t("09:10"), 3, channel="console"),  # console: free
        json.dumps(
            {
                "account_id": A,
                "timestamp": t("10:10"),
                "event_id": "free",
                "api_key_id": K,
                "model": "xingchen-lite",
                "input_tokens": 1000,
                "output_tokens": 500,
            }
        ),  # in the free quota
        json.dumps(
            {
                "account_id": A,
                "timestamp": t("11:15"),
                "event_id": "nope",
                "api_key_id": K,
                "model": "xingchen-nope",
                "input_tokens": 1,
                "output_tokens": 1,
            }
        ),  # rejected: moves the clock
    ]
    exp = expected(lines)
    check(exp)
    assert exp.rejections == [(A, "nope", "unknown_model")]
    assert brief(exp) == [("09", "regular", 0, 0, 0, 0, 0, 0), ("10", "regular", 0, 0, 0, 0, 0, 0)]
    assert [s["at"] for s in exp.settlements] == [parse_rfc3339_ns(t("10:10")), parse_rfc3339_ns(t("11:15"))]
    assert exp.accounts[A] == {
        "account_id": A,
        "status": "active",
        "cash_balance": 0,
        "debt": 0,
        "vouchers": [],
        "free_tokens_left": 1_000_000 - 1_500,
        "last_settled_hour": h("10"),
    }
    # an hour with only rejected calls has no activity: nothing to settle
    only_rejected = expected([created(), lines[3], tick(t("13:00"))])
    assert only_rejected.settlements == [] and only_rejected.accounts[A]["last_settled_hour"] is None


def test_what_moves_the_clock():
    late = t("12:00")
    base = [created(), recharge(t("08:30"), "5"), img("a", t("09:10"), 1)]
    cases = {
        "invalid": img("bad", late, -1),  # invalid_schema: no identity, no clock
        "conflicting": img("a", late, 2),  # conflicting_duplicate: the first stands
        "duplicate": base[2],
    }
    for name, line in cases.items():
        exp = expected(base + [line])
        assert exp.settlements == [], name
        assert exp.clocks[A] == parse_rfc3339_ns(t("09:10")), name
    moving = {
        "refused key": rec("api_key.revoked", late, api_key_id="unknown"),  # rejected, claims its identity
        "unknown model": json.dumps(
            {"account_id": A, "timestamp": late, "event_id": "m", "api_key_id": K, "model": "nope", "input_tokens": 1, "output_tokens": 1}
        ),
        "limits": rec("limits.set", late, qps=5),
        "voucher": voucher(late, "v", "1"),
        "tick": tick(late),
        "tick in UTC": rec("clock.tick", "2024-09-18T04:00:00Z"),
    }
    for name, line in moving.items():
        exp = expected(base + [line])
        assert [s["hour"] for s in exp.settlements] == [h("09")], name
        assert exp.clocks[A] == parse_rfc3339_ns(late), name
    # ticks are records: duplicates are counted, a tick for a new account makes an empty account
    exp = expected(base + [tick(late), tick(late), tick(late, account="other")])
    assert exp.duplicates == 1 and exp.kinds["clock.tick"] == 3
    assert exp.accounts["other"] == {
        "account_id": "other",
        "status": "active",
        "cash_balance": 0,
        "debt": 0,
        "vouchers": [],
        "free_tokens_left": 1_000_000,
        "last_settled_hour": None,
    }
    # a tick with anything else in it is invalid
    bad = rec("clock.tick", late, amount="1")
    assert expected(base + [bad]).rejections == [(A, "", "invalid_schema")]
    assert "clock.tick" in ALL_KINDS and "clock.tick" not in KINDS


def test_grace_from_catalog_and_override(tmp_path):
    lines = [created(), img("a", t("09:10"), 1), tick(t("10:00")), tick(t("10:29:59"))]
    assert expected(lines).grace_minutes == 10
    assert [s["at"] for s in expected(lines).settlements] == [parse_rfc3339_ns(t("10:29:59"))]
    assert [s["at"] for s in expected(lines, grace_minutes=0).settlements] == [parse_rfc3339_ns(t("10:00"))]
    data = json.loads((TESTS.parent / "schemas" / "catalog.json").read_text(encoding="utf-8"))
    assert data["settlement_grace_minutes"] == 10
    data["settlement_grace_minutes"] = 30
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert expected(lines, catalog_path=path).settlements == []
    assert len(expected(lines + [tick(t("10:30"))], catalog_path=path).settlements) == 1
    del data["settlement_grace_minutes"]  # default 10
    path.write_text(json.dumps(data), encoding="utf-8")
    assert [s["at"] for s in expected(lines, catalog_path=path).settlements] == [parse_rfc3339_ns(t("10:29:59"))]


def test_token_amounts_after_the_free_quota():
    # 31 x 32,000 + 8,000 = 1,000,000 free tokens in hour 09; hour 10 is billed
    use = lambda eid, ts, tin, tout: json.dumps(
        {
            "account_id": A,
            "timestamp": ts,
            "event_id": eid,
            "api_key_id": K,  # noqa: E731
            "model": "xingchen-lite",
            "input_tokens": tin,
            "output_tokens": tout,
        }
    )
    lines = [created(), recharge(t("08:00:01"), "0.01")]
    lines += [use(f"q{i}", t(f"09:{i:02d}"), 32_000, 0) for i in range(31)]
    lines += [use("q-last", t("09:40"), 8_000, 0), use("paid", t("10:00"), 1_000, 1_000), tick(t("11:10"))]
    exp = expected(lines)
    check(exp)
    # 1,000 x 0.000002 + 1,000 x 0.000006 = 0.008: 0.01 cash covers it
    assert brief(exp) == [("09", "regular", 0, 0, 0, 0, 0, D("0.01")), ("10", "regular", D("0.008"), 0, D("0.008"), 0, 0, D("0.002"))]
    assert exp.accounts[A]["free_tokens_left"] == 0


def test_totals_helper_catches_a_wrong_settlement():
    exp = expected([created(), img("a", t("09:10"), 1), tick(t("10:10")), img("b", t("09:20"), 1)])
    assert_settlement_totals(exp)
    exp.settlements[1]["amount"] += D("0.000001")
    with pytest.raises(AssertionError):
        assert_settlement_totals(exp)


# ---------------------------------------------------------------------------------------------
# the settlement workload


@pytest.fixture(scope="module")
def workload() -> list[str]:
    return generate_settlement(3000)


@pytest.fixture(scope="module")
def settled(workload):
    return expected(workload)


def test_workload_shape(workload):
    assert len(workload) == 3000
    assert generate_settlement(3000) == workload and generate_settlement(3000, seed=2) != workload
    bodies = [json.loads(line) for line in workload]
    accounts = {b["account_id"] for b in bodies}
    assert len(accounts) == 6
    # keys created before use
    first: dict = {}
    for i, b in enumerate(bodies):
        first.setdefault((b["account_id"], b.get("type", "usage")), i)
    for (account, kind), i in first.items():
        if kind == "usage":
            assert first[(account, "api_key.created")] < i
    stamps = [parse_rfc3339_ns(b["timestamp"]) for b in bodies if isinstance(b.get("timestamp"), str)]
    assert all(b["timestamp"].endswith("+08:00") for b in bodies)
    assert min(s for s in stamps if s is not None) >= parse_rfc3339_ns("2024-09-18T00:00:00+08:00")
    usage = [b for b in bodies if b.get("type", "usage") == "usage" and "model" in b]
    span = max(parse_rfc3339_ns(b["timestamp"]) for b in usage) - min(parse_rfc3339_ns(b["timestamp"]) for b in usage)
    assert span >= 6 * 3600 * 10**9
    assert sum(b.get("channel") == "console" for b in usage) >= 50
    # it ends with one tick per account, 2 h past that account's latest other record
    tail = bodies[-6:]
    assert all(b["type"] == "clock.tick" for b in tail) and {b["account_id"] for b in tail} == accounts
    for t_body in tail:
        latest = max(
            parse_rfc3339_ns(b["timestamp"])
            for b in bodies[:-6]
            if b["account_id"] == t_body["account_id"] and parse_rfc3339_ns(b.get("timestamp")) is not None
        )
        assert parse_rfc3339_ns(t_body["timestamp"]) - latest == 2 * 3600 * 10**9
    # a few late calls, 20 to 90 minutes behind the account's latest record
    latest_by: dict = {}
    late = 0
    for b in usage:
        ts = parse_rfc3339_ns(b["timestamp"])
        prev = latest_by.get(b["account_id"])
        if prev is not None and prev - ts >= 19 * 60 * 10**9:
            late += 1
            assert prev - ts <= 92 * 60 * 10**9
        latest_by[b["account_id"]] = max(ts, prev or ts)
    assert 10 <= late <= 0.03 * len(usage)


def test_workload_settles(settled):
    exp = settled
    assert_settlement_totals(exp)
    # every hour with activity closed, and money is owed (free quota gone early for most accounts)
    assert exp.closed_hours == set(exp.amounts_by_account_hour())
    assert sum(exp.free_tokens_used[a] == 1_000_000 for a in exp.accounts) >= 4
    first_billed: dict = {}
    for (account, hour, _, _), v in sorted(exp.bills.items(), key=lambda kv: kv[0][1]):
        if v["billed_input_tokens"] + v["billed_output_tokens"] > 0:
            first_billed.setdefault(account, hour)
    assert sum(hour <= "2024-09-18T10:00:00+08:00" for hour in first_billed.values()) >= 4
    kinds = Counter(s["kind"] for s in exp.settlements)
    assert kinds["regular"] >= 6 * 6 and kinds["adjustment"] >= 1
    assert any(s["amount"] == 0 and s["kind"] == "regular" for s in exp.settlements)
    assert any(s["voucher_part"] > 0 for s in exp.settlements)
    assert any(s["cash_part"] > 0 for s in exp.settlements)
    assert exp.duplicates > 0 and exp.kinds["clock.tick"] >= 7


def test_workload_arrears(settled):
    exp = settled
    episodes = exp.arrears_episodes()
    recovered = [e for e in episodes if e["end"] is not None]
    assert recovered  # into arrears and back
    hour = 3600 * 10**9
    long = [e for e in episodes if ((e["end"] or exp.clocks[e["account_id"]]) - e["start"]) >= 3 * hour]
    assert long and any(len(e["hours"]) >= 3 for e in long)  # settled in arrears hour after hour
    entered = Counter(a for a, s in exp.status_changes if s == "arrears")
    assert len(entered) >= 2
    # some account never goes into arrears
    assert set(exp.accounts) - set(entered)
