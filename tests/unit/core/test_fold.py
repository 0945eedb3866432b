"""fold.apply on usage: free quota, channels, prices in force, plugins and hourly bill lines."""

from decimal import Decimal

import pytest
from helpers import (
    KEY,
    NO_QUOTA,
    Account,
    D,
    catalog_data,
    make_catalog,
    recharge,
    touched,
    us,
    usage,
    whitelist_add,
)

from pipeline.core.catalog import parse_catalog
from pipeline.core.facts import BILLED, REJECTED
from pipeline.core.state import Line
from pipeline.core.timestamps import US_PER_HOUR, hour_start


def amount_str(outcome):
    return str(outcome.priced.token_amount)


# ---------------------------------------------------------------- free quota


def test_first_calls_are_free_until_the_quota_is_used():
    acct = Account()
    out = acct.feed(usage("e1", input_tokens=1000, output_tokens=500))
    assert out.status == BILLED
    p = out.priced
    assert (p.free_tokens, p.billed_input_tokens, p.billed_output_tokens) == (1500, 0, 0)
    assert p.token_amount == D("0") and str(p.token_amount) == "0.000000"
    assert acct.state.free_used == 1500
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (line.requests, line.input_tokens, line.output_tokens, line.free_tokens) == (1, 1000, 500, 1500)
    assert (line.billed_input_tokens, line.billed_output_tokens, line.quantity) == (0, 0, 0)
    assert str(line.amount) == "0.000000"


def test_quota_straddled_in_the_input():
    acct = Account(make_catalog(free_quota_tokens=100))
    p = acct.feed(usage("e1", input_tokens=150, output_tokens=50)).priced
    assert (p.free_tokens, p.billed_input_tokens, p.billed_output_tokens) == (100, 50, 50)
    # 50 * 0.000004 + 50 * 0.000012
    assert p.token_amount == D("0.000800")
    assert acct.state.free_used == 100


def test_quota_straddled_in_the_output_input_goes_first():
    acct = Account(make_catalog(free_quota_tokens=100))
    p = acct.feed(usage("e1", input_tokens=60, output_tokens=80)).priced
    assert (p.free_tokens, p.billed_input_tokens, p.billed_output_tokens) == (100, 0, 40)
    assert p.token_amount == D("0.000480")


def test_quota_consumed_in_log_order_then_exhausted():
    acct = Account(make_catalog(free_quota_tokens=100))
    a = acct.feed(usage("a", ts="2024-06-07T12:00:00+08:00", input_tokens=30, output_tokens=20)).priced
    # published second, but timestamped earlier: log order decides, not timestamps
    b = acct.feed(usage("b", ts="2024-06-07T11:00:00+08:00", input_tokens=30, output_tokens=40)).priced
    c = acct.feed(usage("c", ts="2024-06-07T10:00:00+08:00", input_tokens=10, output_tokens=10)).priced
    assert (a.free_tokens, a.token_amount) == (50, D("0.000000"))
    assert (b.free_tokens, b.billed_input_tokens, b.billed_output_tokens, b.token_amount) == (50, 0, 20, D("0.000240"))
    assert (c.free_tokens, c.billed_input_tokens, c.billed_output_tokens, c.token_amount) == (0, 10, 10, D("0.000160"))
    assert acct.state.free_used == 100


def test_quota_is_shared_across_models_and_keys():
    acct = Account(make_catalog(free_quota_tokens=100), keys=("key-1", "key-2"))
    acct.feed(usage("a", model="xingchen-lite", key="key-1", input_tokens=70, output_tokens=0))
    p = acct.feed(usage("b", model="xingchen-max", key="key-2", input_tokens=50, output_tokens=10)).priced
    assert (p.free_tokens, p.billed_input_tokens, p.billed_output_tokens) == (30, 20, 10)
    # 20 * 0.00004 + 10 * 0.00012
    assert p.token_amount == D("0.002000")


def test_real_quota_of_one_million_tokens():
    acct = Account()
    # lite has no context limit: one call can use the whole quota
    first = acct.feed(usage("a", model="xingchen-lite", input_tokens=32_000, output_tokens=968_010)).priced
    assert (first.free_tokens, first.billed_input_tokens, first.billed_output_tokens) == (1_000_000, 0, 10)
    assert first.token_amount == D("0.000060")
    assert acct.state.free_used == 1_000_000
    after = acct.feed(usage("b", ts="2024-06-07T10:00:02+08:00", input_tokens=1000, output_tokens=1000)).priced
    assert (after.free_tokens, after.billed_input_tokens, after.billed_output_tokens) == (0, 1000, 1000)
    assert after.token_amount == D("0.016000")
    assert acct.state.free_used == 1_000_000


def test_quota_restored_from_a_snapshot_continues():
    acct = Account()
    acct.state.free_used = 999_950
    p = acct.feed(usage("e1", input_tokens=40, output_tokens=20)).priced
    assert (p.free_tokens, p.billed_output_tokens) == (50, 10)
    assert p.token_amount == D("0.000120")


def test_plugins_are_not_covered_by_the_token_quota():
    acct = Account()
    out = acct.feed(usage("e1", plugins={"text_to_image": 2}))
    assert out.priced.free_tokens == 150
    assert out.priced.token_amount == D("0")
    assert out.priced.plugin_amount == D("0.32")
    assert str(acct.line("2024-06-07T10:00:00+08:00", "plugin:text_to_image").amount) == "0.320000"
    assert acct.state.free_used == 150


# ---------------------------------------------------------------- console channel


def test_console_call_is_free_uses_no_quota_but_is_counted():
    acct = Account(make_catalog(free_quota_tokens=100))
    out = acct.feed(usage("c1", channel="console", input_tokens=60, output_tokens=80, plugins={"text_to_image": 3, "web_search": 1}))
    assert out.status == BILLED
    p = out.priced
    assert p.channel == "console"
    assert (p.free_tokens, p.billed_input_tokens, p.billed_output_tokens) == (0, 0, 0)
    assert p.token_amount == D("0") and p.plugin_amount == D("0")
    assert p.flags == ()
    assert acct.state.free_used == 0
    model = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (model.requests, model.input_tokens, model.output_tokens, model.free_tokens) == (1, 60, 80, 0)
    assert (model.billed_input_tokens, model.billed_output_tokens, model.amount) == (0, 0, D("0"))
    t2i = acct.line("2024-06-07T10:00:00+08:00", "plugin:text_to_image")
    assert (t2i.requests, t2i.quantity, t2i.amount) == (1, 3, D("0"))
    assert acct.line("2024-06-07T10:00:00+08:00", "plugin:web_search").quantity == 1
    # then an API call gets the untouched quota
    api = acct.feed(usage("a1", ts="2024-06-07T10:00:05+08:00", input_tokens=60, output_tokens=80)).priced
    assert (api.free_tokens, api.billed_output_tokens, api.token_amount) == (100, 40, D("0.000480"))


def test_console_call_after_quota_is_still_free():
    acct = Account(NO_QUOTA)
    p = acct.feed(usage("c1", channel="console", model="xingchen-max", input_tokens=6000, output_tokens=2000)).priced
    assert p.token_amount == D("0") and p.billed_input_tokens == 0


def test_console_and_api_share_the_line_of_their_key_model_and_hour():
    acct = Account(NO_QUOTA)
    acct.feed(usage("c1", channel="console", input_tokens=1000, output_tokens=1000))
    acct.feed(usage("a1", ts="2024-06-07T10:30:00+08:00", input_tokens=1000, output_tokens=1000))
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (line.requests, line.input_tokens, line.output_tokens) == (2, 2000, 2000)
    assert (line.billed_input_tokens, line.billed_output_tokens) == (1000, 1000)
    assert line.amount == D("0.016000")


# ---------------------------------------------------------------- prices in force


@pytest.mark.parametrize(
    "model, inp, out, amount",
    [
        ("xingchen-lite", 1000, 1000, "0.008000"),
        ("xingchen-base", 1000, 1000, "0.016000"),
        ("xingchen-plus", 1000, 1000, "0.016000"),
        ("xingchen-max", 1000, 1000, "0.160000"),
        ("xingchen-base", 1, 1, "0.000016"),
        ("xingchen-lite", 1, 0, "0.000002"),
        ("xingchen-max", 6500, 1500, "0.440000"),
        ("xingchen-lite", 32000, 100000, "0.664000"),
    ],
)
def test_model_prices(model, inp, out, amount):
    acct = Account(NO_QUOTA)
    out_ = acct.feed(usage("e1", model=model, input_tokens=inp, output_tokens=out))
    assert amount_str(out_) == amount
    assert str(acct.line("2024-06-07T10:00:00+08:00", model).amount) == amount


def test_plus_v2_priced_from_september_18():
    acct = Account(NO_QUOTA)
    before = acct.feed(usage("e1", model="xingchen-plus-v2", ts="2024-09-17T23:59:59+08:00"))
    assert before.status == REJECTED and before.rejection.reason == "no_price_in_force"
    at = acct.feed(usage("e2", model="xingchen-plus-v2", ts="2024-09-18T00:00:00+08:00", input_tokens=30_000, output_tokens=2_000))
    assert at.status == BILLED
    assert amount_str(at) == "0.144000"


def test_longcontext_priced_at_any_time_when_whitelisted():
    acct = Account(NO_QUOTA)
    acct.feed(whitelist_add())
    out = acct.feed(usage("e1", model="xingchen-longcontext", ts="2023-01-01T00:00:00+08:00", input_tokens=20_000, output_tokens=12_000))
    assert out.status == BILLED
    assert amount_str(out) == "0.640000"


@pytest.mark.parametrize(
    "ts, billed",
    [
        ("2024-06-06T23:59:59+08:00", False),
        ("2024-06-06T23:59:59.999999+08:00", False),
        ("2024-06-06T15:59:59.999999Z", False),
        ("2024-06-07T00:00:00+08:00", True),
        ("2024-06-06T16:00:00Z", True),
        ("2024-06-06T12:00:00-04:00", True),
    ],
)
def test_base_price_starts_at_midnight_shanghai(ts, billed):
    acct = Account(NO_QUOTA)
    out = acct.feed(usage("e1", ts=ts, input_tokens=1000, output_tokens=1000))
    if billed:
        assert out.status == BILLED
        assert amount_str(out) == "0.016000"
        assert out.priced.hour_us == us("2024-06-07T00:00:00+08:00")
    else:
        assert out.status == REJECTED
        assert out.rejection.reason == "no_price_in_force"
        assert acct.state.lines == {}


def _two_version_catalog(free_quota=0):
    data = catalog_data()
    data["free_quota_tokens"] = free_quota
    data["models"]["xingchen-base"]["prices"] = [
        {"from": "2024-06-07", "input_per_1k": "0.004", "output_per_1k": "0.012"},
        {"from": "2024-05-01", "input_per_1k": "0.008", "output_per_1k": "0.024"},
    ]
    data["plugins"]["text_to_image"]["prices"].append({"from": "2024-10-01", "per_unit": "0.2"})
    data["plugins"]["web_search"]["prices"].append({"from": "2024-10-01", "per_unit": "0.01"})
    return parse_catalog(data)


def test_two_price_versions_each_side_of_the_boundary():
    acct = Account(_two_version_catalog())
    old = acct.feed(usage("old", ts="2024-06-06T23:59:59+08:00", input_tokens=1000, output_tokens=1000))
    new = acct.feed(usage("new", ts="2024-06-07T00:00:00+08:00", input_tokens=1000, output_tokens=1000))
    new_utc = acct.feed(usage("new-utc", ts="2024-06-06T16:00:00Z", input_tokens=1000, output_tokens=1000))
    too_old = acct.feed(usage("too-old", ts="2024-04-30T23:59:59+08:00"))
    first_old = acct.feed(usage("first-old", ts="2024-05-01T00:00:00+08:00", input_tokens=1000, output_tokens=0))
    assert amount_str(old) == "0.032000"
    assert amount_str(new) == "0.016000"
    assert amount_str(new_utc) == "0.016000"
    assert too_old.rejection.reason == "no_price_in_force"
    assert amount_str(first_old) == "0.008000"
    assert acct.line("2024-06-06T23:00:00+08:00", "xingchen-base").amount == D("0.032000")
    assert acct.line("2024-06-07T00:00:00+08:00", "xingchen-base").amount == D("0.032000")  # new + new_utc


def test_plugin_price_versions():
    acct = Account(_two_version_catalog())
    before = acct.feed(
        usage("b", ts="2024-09-30T23:59:59+08:00", input_tokens=0, output_tokens=0, plugins={"text_to_image": 1, "web_search": 2})
    )
    after = acct.feed(
        usage("a", ts="2024-10-01T00:00:00+08:00", input_tokens=0, output_tokens=0, plugins={"text_to_image": 1, "web_search": 2})
    )
    assert before.priced.plugin_amount == D("0.16")
    assert after.priced.plugin_amount == D("0.22")
    assert acct.line("2024-10-01T00:00:00+08:00", "plugin:web_search").amount == D("0.020000")
    assert acct.line("2024-09-30T23:00:00+08:00", "plugin:web_search").amount == D("0.000000")


def test_text_to_image_before_april_23_has_no_price():
    acct = Account(NO_QUOTA)
    acct.feed(whitelist_add())
    call = dict(model="xingchen-longcontext", plugins={"text_to_image": 1})
    before = acct.feed(usage("b", ts="2024-04-22T23:59:59+08:00", **call))
    assert before.status == REJECTED
    assert before.rejection.reason == "no_price_in_force"
    assert "text_to_image" in before.rejection.detail
    at = acct.feed(usage("a", ts="2024-04-23T00:00:00+08:00", input_tokens=1000, output_tokens=1000, **call))
    assert at.status == BILLED
    assert at.priced.token_amount == D("0.040000")
    assert at.priced.plugin_amount == D("0.16")
    # a zero count of a plugin not yet priced is no use of it
    zero = acct.feed(usage("z", ts="2024-04-22T12:00:00+08:00", model="xingchen-longcontext", plugins={"text_to_image": 0}))
    assert zero.status == BILLED


# ---------------------------------------------------------------- plugins and lines


FREE = ["digital_human_voice", "function_call", "web_search", "knowledge_base", "card_library", "long_term_memory", "rejection"]


@pytest.mark.parametrize("name", FREE)
def test_free_plugins_cost_nothing_but_are_metered(name):
    acct = Account(NO_QUOTA)
    out = acct.feed(usage("e1", input_tokens=0, output_tokens=0, plugins={name: 4}))
    assert out.status == BILLED
    assert out.priced.plugin_amount == D("0")
    line = acct.line("2024-06-07T10:00:00+08:00", f"plugin:{name}")
    assert (line.requests, line.quantity) == (1, 4)
    assert str(line.amount) == "0.000000"


def test_plugin_lines_accumulate_requests_and_quantity_with_zero_tokens():
    acct = Account(NO_QUOTA)
    first = acct.feed(
        usage("e1", ts="2024-06-07T10:05:00+08:00", input_tokens=1000, output_tokens=1000, plugins={"text_to_image": 2, "web_search": 1})
    )
    assert first.status == BILLED and sorted(touched(acct.state)[0]) == sorted(
        [
            (us("2024-06-07T10:00:00+08:00"), KEY, "xingchen-base"),
            (us("2024-06-07T10:00:00+08:00"), KEY, "plugin:text_to_image"),
            (us("2024-06-07T10:00:00+08:00"), KEY, "plugin:web_search"),
        ]
    )
    assert first.priced.token_amount == D("0.016000")
    assert first.priced.plugin_amount == D("0.32")
    assert first.priced.plugins == (("text_to_image", 2), ("web_search", 1))
    acct.feed(usage("e2", ts="2024-06-07T10:06:00+08:00", input_tokens=10, output_tokens=10, plugins={"text_to_image": 3}))
    t2i = acct.line("2024-06-07T10:00:00+08:00", "plugin:text_to_image")
    assert t2i == Line(requests=2, quantity=5, amount=D("0.800000"), revision=acct.state.seq)
    assert (t2i.input_tokens, t2i.output_tokens, t2i.free_tokens, t2i.billed_input_tokens, t2i.billed_output_tokens) == (0, 0, 0, 0, 0)
    web = acct.line("2024-06-07T10:00:00+08:00", "plugin:web_search")
    assert (web.requests, web.quantity) == (1, 1)
    model = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (model.requests, model.quantity, model.input_tokens, model.output_tokens) == (2, 0, 1010, 1010)
    assert model.amount == D("0.016160")


def test_a_plugin_with_count_zero_makes_no_line():
    acct = Account(NO_QUOTA)
    out = acct.feed(usage("e1", plugins={"text_to_image": 0, "web_search": 1}))
    assert out.priced.plugins == (("web_search", 1),)
    items = {key[2] for key in acct.state.lines}
    assert items == {"xingchen-base", "plugin:web_search"}


def test_lines_per_key_and_hour_in_shanghai_time():
    acct = Account(NO_QUOTA, keys=("key-1", "key-2"))
    a = acct.feed(usage("a", ts="2024-06-07T10:59:59.999+08:00", key="key-1", input_tokens=1000, output_tokens=0))
    b = acct.feed(usage("b", ts="2024-06-07T11:00:00+08:00", key="key-1", input_tokens=1000, output_tokens=0))
    c = acct.feed(usage("c", ts="2024-06-07T02:30:00Z", key="key-2", input_tokens=1000, output_tokens=0))
    h10, h11 = us("2024-06-07T10:00:00+08:00"), us("2024-06-07T11:00:00+08:00")
    assert h11 - h10 == US_PER_HOUR
    assert a.priced.hour_us == h10 and b.priced.hour_us == h11 and c.priced.hour_us == h10
    assert set(acct.state.lines) == {(h10, "key-1", "xingchen-base"), (h11, "key-1", "xingchen-base"), (h10, "key-2", "xingchen-base")}
    for line in acct.state.lines.values():
        assert line.requests == 1 and line.amount == D("0.004000")


def test_a_late_call_revises_the_line_of_its_own_hour():
    acct = Account(NO_QUOTA)
    acct.feed(usage("a", ts="2024-06-07T10:10:00+08:00", input_tokens=1000, output_tokens=0))
    acct.feed(usage("b", ts="2024-06-07T12:10:00+08:00", input_tokens=1000, output_tokens=0))
    late = acct.feed(usage("late", ts="2024-06-07T10:50:00+08:00", input_tokens=0, output_tokens=1000))
    assert late.status == BILLED and touched(acct.state)[0] == [(us("2024-06-07T10:00:00+08:00"), KEY, "xingchen-base")]
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-base")
    assert (line.requests, line.amount, line.revision) == (2, D("0.016000"), acct.state.seq)
    assert acct.line("2024-06-07T12:00:00+08:00", "xingchen-base").requests == 1


def test_revision_is_the_seq_of_the_last_change():
    acct = Account(NO_QUOTA)  # seq 1: the key
    acct.feed(usage("a", plugins={"web_search": 1}))  # seq 2
    acct.feed(recharge("5"))  # seq 3, touches no line
    acct.feed(usage("b", ts="2024-06-07T10:00:01+08:00"))  # seq 4
    assert acct.state.seq == 4
    assert acct.line("2024-06-07T10:00:00+08:00", "xingchen-base").revision == 4
    assert acct.line("2024-06-07T10:00:00+08:00", "plugin:web_search").revision == 2
    rejected = acct.feed(usage("c", model="nope"))  # seq 5, rejected: no line change
    assert rejected.rejection.seq == 5
    assert acct.line("2024-06-07T10:00:00+08:00", "xingchen-base").revision == 4


def test_priced_usage_carries_the_call():
    acct = Account(NO_QUOTA)
    p = acct.feed(usage("e1", ts="2024-06-07T10:20:30.5+08:00", input_tokens=10, output_tokens=20)).priced
    assert p.account_id == acct.state.account_id
    assert p.event_id == "e1"
    assert p.ts_us == us("2024-06-07T10:20:30.5+08:00")
    assert p.hour_us == hour_start(p.ts_us) == us("2024-06-07T10:00:00+08:00")
    assert (p.api_key_id, p.model, p.channel) == (KEY, "xingchen-base", "api")
    assert (p.input_tokens, p.output_tokens) == (10, 20)
    assert p.token_amount == D("0.000280")
    assert p.plugin_amount == D("0")
    assert p.seq == acct.state.seq == 2


def test_amounts_are_exact_decimals_over_many_calls():
    acct = Account(NO_QUOTA)
    for i in range(300):
        acct.feed(
            usage(f"e{i}", ts=f"2024-06-07T10:{i // 60:02d}:{i % 60:02d}+08:00", model="xingchen-lite", input_tokens=1, output_tokens=1)
        )
    line = acct.line("2024-06-07T10:00:00+08:00", "xingchen-lite")
    assert line.requests == 300
    assert isinstance(line.amount, Decimal)
    assert str(line.amount) == "0.002400"


def test_integral_float_tokens_are_billed_not_crashed():
    acct = Account(NO_QUOTA)
    out = acct.feed(usage("e1", input_tokens=1000.0, output_tokens=1000.0, plugins={"text_to_image": 1.0}))
    assert out.status == BILLED
    assert out.priced.token_amount == D("0.016000")
    assert out.priced.plugin_amount == D("0.16")
    assert acct.feed(usage("e1", input_tokens=1000, output_tokens=1000, plugins={"text_to_image": 1})).status == "duplicate"
