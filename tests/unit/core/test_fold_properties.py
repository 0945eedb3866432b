"""Properties of the fold (BILLING_RULES §1, §4, §5, §8, §10; interpretations), checked by hypothesis.

Records are built as JSON bytes and go through parse_record like records from the topic. The
expected bill lines are computed here from the catalog JSON file (not from pipeline.core.catalog):
prices per 1000 tokens / 1000, the free quota used in log order, input before output.
"""

from __future__ import annotations

import copy
import json
from dataclasses import astuple
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from helpers import catalog_data, make_catalog, touched
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.catalog import Catalog
from pipeline.core.facts import APPLIED, BILLED, DUPLICATE, Outcome
from pipeline.core.fold import apply
from pipeline.core.records import parse_record
from pipeline.core.state import AccountState

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DATA = catalog_data()
TZ8 = timezone(timedelta(hours=8))
START = datetime(2024, 9, 18, tzinfo=TZ8)  # every model and plugin has its price in force from here
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
START_US = (START - _EPOCH) // timedelta(microseconds=1)
SPAN_US = 3 * 86_400 * 1_000_000
HOUR_US = 3_600_000_000
KEYS = ("key-a", "key-b", "key-c")
MODELS = sorted(DATA["models"])
PLUGINS = sorted(DATA["plugins"])
QUOTAS = (0, 1, 999, 20_000, 150_000, 1_000_000)
THOUSAND = Decimal(1000)


@lru_cache(maxsize=None)
def catalog(quota: int) -> Catalog:
    return make_catalog(free_quota_tokens=quota)


def price(model: str) -> tuple[Decimal, Decimal]:
    (p,) = DATA["models"][model]["prices"]
    return Decimal(p["input_per_1k"]) / THOUSAND, Decimal(p["output_per_1k"]) / THOUSAND


def unit_price(plugin: str) -> Decimal:
    (p,) = DATA["plugins"][plugin]["prices"]
    return Decimal(p["per_unit"])


def rfc3339(offset_us: int) -> str:
    return (START + timedelta(microseconds=offset_us)).isoformat(timespec="microseconds")


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


# -- strategies ------------------------------------------------------------------------------------


@st.composite
def calls(draw, channels: tuple[str, ...] = ("api",)) -> dict[str, Any]:
    """A usage call that breaks no rule: known model and plugins, priced, within the limits."""
    model = draw(st.sampled_from(MODELS))
    spec = DATA["models"][model]
    max_input = min(spec["max_input"], DATA["global_max_input_tokens"])
    input_tokens = draw(st.integers(0, max_input))
    cap = spec["context"] - input_tokens if spec["context"] is not None else 40_000
    return {
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": draw(st.integers(0, cap)),
        "offset_us": draw(st.integers(0, SPAN_US - 1)),
        "api_key_id": draw(st.sampled_from(KEYS)),
        "channel": draw(st.sampled_from(channels)),
        "plugins": draw(st.dictionaries(st.sampled_from(PLUGINS), st.integers(0, 4), max_size=3)),
    }


def usage_record(account: str, n: int, call: dict[str, Any]) -> bytes:
    body = {
        "account_id": account,
        "timestamp": rfc3339(call["offset_us"]),
        "event_id": f"{account}-ev-{n}",
        "api_key_id": call["api_key_id"],
        "model": call["model"],
        "input_tokens": call["input_tokens"],
        "output_tokens": call["output_tokens"],
    }
    if call["channel"] != "api" or n % 2:
        body["channel"] = call["channel"]
    if call["plugins"]:
        body["plugins"] = call["plugins"]
    return encode(body)


def prelude(account: str) -> list[bytes]:
    ts = rfc3339(-86_400_000_000)
    out = [encode({"type": "api_key.created", "account_id": account, "timestamp": ts, "api_key_id": k}) for k in KEYS]
    out.append(encode({"type": "whitelist.add", "account_id": account, "timestamp": ts, "model": "xingchen-longcontext"}))
    return out


@st.composite
def account_events(draw, account: str) -> bytes:
    """Account records and usage that may be rejected, to give the state more to carry."""
    n = draw(st.integers(0, 10**9))
    ts = rfc3339(draw(st.integers(0, SPAN_US - 1)))
    kind = draw(st.sampled_from(("created", "revoked", "limits", "wl-add", "wl-remove", "recharge", "voucher", "bad-usage")))
    base = {"account_id": account, "timestamp": ts}
    if kind == "created":
        return encode({**base, "type": "api_key.created", "api_key_id": draw(st.sampled_from(KEYS + ("key-d", "key-e")))})
    if kind == "revoked":
        return encode({**base, "type": "api_key.revoked", "api_key_id": draw(st.sampled_from(KEYS + ("key-z",)))})
    if kind == "limits":
        values = draw(st.dictionaries(st.sampled_from(("qps", "qpm", "tpm")), st.integers(0, 100_000)))
        return encode({**base, "type": "limits.set", **values})
    if kind in ("wl-add", "wl-remove"):
        return encode({**base, "type": "whitelist." + kind[3:], "model": "xingchen-longcontext"})
    if kind == "recharge":
        return encode({**base, "type": "credit.recharge", "amount": f"{n % 1000}.{n % 7}"})
    if kind == "voucher":
        return encode({**base, "type": "credit.voucher", "voucher_id": f"v{n % 5}", "amount": str(n % 500), "expires_at": rfc3339(SPAN_US)})
    call = draw(calls(channels=("api", "console")))
    call["model"] = draw(st.sampled_from((call["model"], "xingchen-nope", "xingchen-longcontext")))
    call["input_tokens"] += draw(st.sampled_from((0, 40_000)))
    return usage_record(account, n, call)


@st.composite
def sequences(
    draw, account: str, min_size: int = 1, max_size: int = 25, channels: tuple[str, ...] = ("api",), mixed: bool = False
) -> list[bytes]:
    items = draw(
        st.lists(st.one_of(calls(channels), account_events(account)) if mixed else calls(channels), min_size=min_size, max_size=max_size)
    )
    return [item if isinstance(item, bytes) else usage_record(account, i, item) for i, item in enumerate(items)]


# -- running the fold ------------------------------------------------------------------------------


def feed(state: AccountState, raws: list[bytes], cat: Catalog) -> list[Outcome]:
    return [outcome for outcome, _ in feed_touching(state, raws, cat)]


def feed_touching(state: AccountState, raws: list[bytes], cat: Catalog) -> list[tuple[Outcome, tuple[list, list]]]:
    """Each record's outcome with the lines and windows it changed."""
    return [(apply(state, parse_record(raw, state.account_id), cat), touched(state)) for raw in raws]


def fresh(account: str, cat: Catalog) -> AccountState:
    state = AccountState(account)
    assert all(o.status == APPLIED for o in feed(state, prelude(account), cat))
    return state


def lines_of(state: AccountState, with_revision: bool = True) -> dict[Any, tuple]:
    return {key: astuple(line) if with_revision else astuple(line)[:-1] for key, line in state.lines.items()}


def expected_lines(calls_in_order: list[dict[str, Any]], quota: int) -> tuple[dict[Any, list], int]:
    """Bill lines and quota used, from the rule book alone."""
    lines: dict[Any, list] = {}
    remaining = quota
    for call in calls_in_order:
        api = call["channel"] == "api"
        free_in = min(call["input_tokens"], remaining) if api else 0
        remaining -= free_in
        free_out = min(call["output_tokens"], remaining) if api else 0
        remaining -= free_out
        billed_in = call["input_tokens"] - free_in if api else 0
        billed_out = call["output_tokens"] - free_out if api else 0
        p_in, p_out = price(call["model"])
        ts = START_US + call["offset_us"]
        hour = ts - ts % HOUR_US
        line = lines.setdefault((hour, call["api_key_id"], call["model"]), [0, 0, 0, 0, 0, 0, 0, Decimal(0)])
        for i, v in enumerate((1, call["input_tokens"], call["output_tokens"], free_in + free_out, billed_in, billed_out, 0)):
            line[i] += v
        line[7] += billed_in * p_in + billed_out * p_out
        for name, units in call["plugins"].items():
            if units:
                pline = lines.setdefault((hour, call["api_key_id"], f"plugin:{name}"), [0, 0, 0, 0, 0, 0, 0, Decimal(0)])
                pline[0] += 1
                pline[6] += units
                pline[7] += units * unit_price(name) if api else 0
    return lines, quota - remaining


# -- (a) amounts and the free quota ------------------------------------------------------------------


@SETTINGS
@given(quota=st.sampled_from(QUOTAS), data=st.data())
def test_valid_api_calls_are_all_billed_and_lines_match_the_rule_book(quota, data):
    items = data.draw(st.lists(calls(), min_size=1, max_size=30))
    cat = catalog(quota)
    state = fresh("acct-a", cat)
    outcomes = feed(state, [usage_record("acct-a", i, c) for i, c in enumerate(items)], cat)
    assert all(o.status == BILLED for o in outcomes)

    priced_total = sum((o.priced.token_amount + o.priced.plugin_amount for o in outcomes), Decimal(0))
    line_total = sum((line.amount for line in state.lines.values()), Decimal(0))
    assert line_total == priced_total

    total_tokens = sum(c["input_tokens"] + c["output_tokens"] for c in items)
    free_used = sum(o.priced.free_tokens for o in outcomes)
    assert free_used == state.free_used == min(quota, total_tokens) <= quota
    assert sum(line.free_tokens for line in state.lines.values()) == free_used

    want, want_free = expected_lines(items, quota)
    assert want_free == free_used
    got = {
        k: [
            line.requests,
            line.input_tokens,
            line.output_tokens,
            line.free_tokens,
            line.billed_input_tokens,
            line.billed_output_tokens,
            line.quantity,
            line.amount,
        ]
        for k, line in state.lines.items()
    }
    assert got == want
    for line in state.lines.values():
        assert line.amount.as_tuple().exponent == -6 and line.amount >= 0


@SETTINGS
@given(quota=st.sampled_from(QUOTAS), data=st.data())
def test_console_calls_use_no_quota_and_cost_nothing(quota, data):
    items = data.draw(st.lists(calls(channels=("api", "console")), min_size=1, max_size=30))
    cat = catalog(quota)
    state = fresh("acct-a", cat)
    fed = feed_touching(state, [usage_record("acct-a", i, c) for i, c in enumerate(items)], cat)
    outcomes = [outcome for outcome, _ in fed]
    assert all(o.status == BILLED for o in outcomes)
    api_tokens = sum(c["input_tokens"] + c["output_tokens"] for c in items if c["channel"] == "api")
    assert state.free_used == min(quota, api_tokens)
    for call, (outcome, (_, windows)) in zip(items, fed):
        if call["channel"] == "console":
            p = outcome.priced
            assert (p.free_tokens, p.billed_input_tokens, p.billed_output_tokens) == (0, 0, 0)
            assert p.token_amount == p.plugin_amount == 0 and outcome.violations == () and windows == []
    want, _ = expected_lines(items, quota)
    assert {k: [*astuple(line)[:7], line.amount] for k, line in state.lines.items()} == want


# -- (b) replays are duplicates and change nothing ------------------------------------------------


@SETTINGS
@given(quota=st.sampled_from(QUOTAS), data=st.data())
def test_replaying_a_prefix_changes_no_line(quota, data):
    raws = data.draw(sequences("acct-a", mixed=data.draw(st.booleans()), channels=("api", "console")))
    cat = catalog(quota)
    state = fresh("acct-a", cat)
    first = feed(state, raws, cat)
    claimed = [raw for raw, o in zip(raws, first) if o.claimed]
    lines = lines_of(state)
    durable = state.to_json()
    free_used, duplicates = state.free_used, state.duplicates

    k = data.draw(st.integers(0, len(raws)))
    replay = data.draw(st.permutations(raws[:k])) if data.draw(st.booleans()) else raws[:k]
    again = feed_touching(state, replay, cat)
    for raw, (outcome, (changed_lines, _)) in zip(replay, again):
        if raw in claimed:
            assert outcome.status == DUPLICATE
        assert outcome.status != BILLED and changed_lines == [] and outcome.priced is None
    assert lines_of(state) == lines
    assert state.free_used == free_used
    assert state.duplicates == duplicates + sum(1 for raw in replay if raw in claimed)
    # apart from the counters the replay moves (seq, duplicates), the durable state is the same
    before, after = json.loads(durable), json.loads(state.to_json())
    for d in (before, after):
        d.pop("seq"), d.pop("duplicates")
    assert before == after


# -- (c) accounts are independent -------------------------------------------------------------------


@SETTINGS
@given(quota=st.sampled_from(QUOTAS), data=st.data())
def test_interleaving_accounts_differently_changes_no_account(quota, data):
    accounts = ("acct-a", "acct-b", "acct-c")[: data.draw(st.integers(2, 3))]
    per_account = {a: prelude(a) + data.draw(sequences(a, max_size=12, mixed=True, channels=("api", "console"))) for a in accounts}
    cat = catalog(quota)

    def run(order: list[str]) -> dict[str, Any]:
        states = {a: AccountState(a) for a in accounts}
        cursor = dict.fromkeys(accounts, 0)
        statuses: dict[str, list] = {a: [] for a in accounts}
        for a in order:
            outcome = apply(states[a], parse_record(per_account[a][cursor[a]], a), cat)
            statuses[a].append((outcome.status, outcome.rejection and outcome.rejection.reason))
            cursor[a] += 1
        return {a: (lines_of(s), s.to_json(), statuses[a]) for a, s in states.items()}

    labels = [a for a in accounts for _ in per_account[a]]
    one = run(labels)
    other = run(data.draw(st.permutations(labels)))
    assert one == other


# -- (d) a state round trip in the middle ---------------------------------------------------------


def summary(fed: list[tuple[Outcome, tuple[list, list]]]) -> list[tuple]:
    return [
        (
            o.status,
            o.claimed,
            o.rejection and (o.rejection.reason, o.rejection.seq),
            o.priced,
            tuple(o.violations),
            tuple(lines),
            tuple(windows),
        )
        for o, (lines, windows) in fed
    ]


@SETTINGS
@given(quota=st.sampled_from(QUOTAS), data=st.data())
def test_a_state_round_trip_mid_sequence_changes_nothing(quota, data):
    raws = data.draw(sequences("acct-a", max_size=30, mixed=True, channels=("api", "console")))
    cat = catalog(quota)
    straight = fresh("acct-a", cat)
    want = feed_touching(straight, raws, cat)

    cut = data.draw(st.integers(0, len(raws)))
    state = fresh("acct-a", cat)
    got = feed_touching(state, raws[:cut], cat)
    # a restart: the durable part from its JSON, the working sets as the worker reloads them
    restored = AccountState.from_json(state.to_json())
    restored.seen = dict(state.seen)
    restored.add_lines(copy.deepcopy(state.lines))
    restored.windows = copy.deepcopy(state.windows)
    got += feed_touching(restored, raws[cut:], cat)

    assert summary(got) == summary(want)
    assert lines_of(restored) == lines_of(straight)
    assert restored.to_json() == straight.to_json()
    assert restored == straight


# -- (e) a call straddling the end of the quota ---------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_a_call_straddling_the_quota_is_billed_for_the_rest(data):
    quota = data.draw(st.integers(1, 20_000))
    used = data.draw(st.integers(0, quota - 1))
    cat = catalog(quota)
    state = fresh("acct-a", cat)
    state.free_used = used  # what earlier calls took
    call = data.draw(calls().filter(lambda c: c["input_tokens"] + c["output_tokens"] > 0))
    remaining = quota - used
    call["input_tokens"] = min(call["input_tokens"], remaining + data.draw(st.integers(0, 5)))
    spec = DATA["models"][call["model"]]
    room = (spec["context"] - call["input_tokens"]) if spec["context"] is not None else 40_000
    call["output_tokens"] = min(room, max(call["output_tokens"], remaining - call["input_tokens"] + 1))
    tokens = call["input_tokens"] + call["output_tokens"]

    (outcome,) = feed(state, [usage_record("acct-a", 0, call)], cat)
    assert outcome.status == BILLED
    p = outcome.priced
    assert p.free_tokens + p.billed_input_tokens + p.billed_output_tokens == tokens
    assert p.free_tokens == min(remaining, tokens)
    free_in = min(call["input_tokens"], remaining)
    assert p.billed_input_tokens == call["input_tokens"] - free_in  # input before output
    assert p.billed_output_tokens == call["output_tokens"] - min(call["output_tokens"], remaining - free_in)
    assert state.free_used == used + p.free_tokens <= quota
    p_in, p_out = price(call["model"])
    assert p.token_amount == p.billed_input_tokens * p_in + p.billed_output_tokens * p_out

    # the quota is spent now: the next call is billed in full
    nxt = dict(call, offset_us=(call["offset_us"] + 1) % SPAN_US)
    if tokens >= remaining:
        (after,) = feed(state, [usage_record("acct-a", 1, nxt)], cat)
        assert after.priced.free_tokens == 0
        assert after.priced.billed_input_tokens + after.priced.billed_output_tokens == tokens
