"""The price catalog: models, dated prices, limits, plugins, free quota (BILLING_RULES §2-§6)."""

import json
from decimal import Decimal

import pytest
from helpers import CATALOG, catalog_data, us

from pipeline.core.catalog import Catalog, CatalogError, load_catalog, parse_catalog
from pipeline.core.windows import Limits

FREE_PLUGINS = (
    "digital_human_voice",
    "function_call",
    "web_search",
    "knowledge_base",
    "card_library",
    "long_term_memory",
    "rejection",
)


def test_default_catalog_globals():
    assert isinstance(CATALOG, Catalog)
    assert CATALOG.version == "2024-09-18.1"
    assert CATALOG.free_quota_tokens == 1_000_000
    assert CATALOG.global_max_input == 32_000
    assert CATALOG.default_limits == Limits(qps=1, qpm=60, tpm=1000)
    assert CATALOG.max_active_keys == 3


@pytest.mark.parametrize(
    "name, inp, out, since, context, max_input, whitelist_only",
    [
        ("xingchen-lite", "0.000002", "0.000006", "2024-06-07T00:00:00+08:00", None, 32_000, False),
        ("xingchen-base", "0.000004", "0.000012", "2024-06-07T00:00:00+08:00", 8_000, 6_500, False),
        ("xingchen-plus", "0.000004", "0.000012", "2024-06-07T00:00:00+08:00", 8_000, 6_500, False),
        ("xingchen-plus-v2", "0.000004", "0.000012", "2024-09-18T00:00:00+08:00", 32_000, 30_000, False),
        ("xingchen-max", "0.00004", "0.00012", "2024-06-07T00:00:00+08:00", 8_000, 6_500, False),
        ("xingchen-longcontext", "0.00002", "0.00002", None, 32_000, 32_000, True),
    ],
)
def test_models_of_the_rule_book(name, inp, out, since, context, max_input, whitelist_only):
    model = CATALOG.models[name]
    assert model.context == context
    assert model.max_input == max_input
    assert model.whitelist_only is whitelist_only
    assert len(model.prices) == 1
    price = model.prices[0]
    assert price.input_per_token == Decimal(inp)
    assert price.output_per_token == Decimal(out)
    assert price.from_us == (None if since is None else us(since))


def test_exactly_the_six_models():
    assert set(CATALOG.models) == {
        "xingchen-lite",
        "xingchen-base",
        "xingchen-plus",
        "xingchen-plus-v2",
        "xingchen-max",
        "xingchen-longcontext",
    }


def test_plugins():
    assert set(CATALOG.plugins) == {"text_to_image", *FREE_PLUGINS}
    t2i = CATALOG.plugins["text_to_image"]
    assert t2i.unit == "image"
    assert t2i.prices[0].per_unit == Decimal("0.16")
    assert t2i.prices[0].from_us == us("2024-04-23T00:00:00+08:00")
    for name in FREE_PLUGINS:
        spec = CATALOG.plugins[name]
        assert spec.unit == "invocation"
        assert spec.price_at(us("2000-01-01T00:00:00Z")).per_unit == Decimal("0")


@pytest.mark.parametrize(
    "model, before, at",
    [
        ("xingchen-base", "2024-06-06T23:59:59.999999+08:00", "2024-06-07T00:00:00+08:00"),
        ("xingchen-base", "2024-06-06T15:59:59Z", "2024-06-06T16:00:00Z"),
        ("xingchen-lite", "2024-06-06T23:59:59+08:00", "2024-06-07T00:00:00+08:00"),
        ("xingchen-max", "2024-06-06T23:59:59+08:00", "2024-06-07T00:00:00+08:00"),
        ("xingchen-plus", "2024-06-06T23:59:59+08:00", "2024-06-07T00:00:00+08:00"),
        ("xingchen-plus-v2", "2024-09-17T23:59:59+08:00", "2024-09-18T00:00:00+08:00"),
    ],
)
def test_price_starts_at_midnight_shanghai(model, before, at):
    spec = CATALOG.models[model]
    assert spec.price_at(us(before)) is None
    assert spec.price_at(us(at)) is spec.prices[0]


def test_longcontext_always_priced():
    assert CATALOG.models["xingchen-longcontext"].price_at(us("1999-01-01T00:00:00Z")) is not None


def test_text_to_image_price_from_april_23():
    t2i = CATALOG.plugins["text_to_image"]
    assert t2i.price_at(us("2024-04-22T23:59:59+08:00")) is None
    assert t2i.price_at(us("2024-04-22T16:00:00Z")).per_unit == Decimal("0.16")


def _versioned():
    data = catalog_data()
    data["models"]["xingchen-base"]["prices"] = [
        {"from": "2024-07-01", "input_per_1k": "0.002", "output_per_1k": "0.010"},
        {"from": None, "input_per_1k": "0.008", "output_per_1k": "0.024"},
        {"from": "2024-06-07", "input_per_1k": "0.004", "output_per_1k": "0.012"},
    ]
    return parse_catalog(data)


def test_versions_are_ordered_and_the_latest_started_one_is_in_force():
    base = _versioned().models["xingchen-base"]
    assert [p.from_us for p in base.prices] == [None, us("2024-06-07T00:00:00+08:00"), us("2024-07-01T00:00:00+08:00")]
    assert base.price_at(us("2020-01-01T00:00:00Z")).input_per_token == Decimal("0.000008")
    assert base.price_at(us("2024-06-06T23:59:59.999999+08:00")).input_per_token == Decimal("0.000008")
    assert base.price_at(us("2024-06-07T00:00:00+08:00")).input_per_token == Decimal("0.000004")
    assert base.price_at(us("2024-06-30T23:59:59+08:00")).output_per_token == Decimal("0.000012")
    assert base.price_at(us("2024-07-01T00:00:00+08:00")).output_per_token == Decimal("0.00001")
    assert base.price_at(us("2030-01-01T00:00:00Z")).input_per_token == Decimal("0.000002")


def test_two_versions_on_the_same_date_are_refused():
    data = catalog_data()
    data["models"]["xingchen-base"]["prices"].append({"from": "2024-06-07", "input_per_1k": "0.001", "output_per_1k": "0.001"})
    with pytest.raises(CatalogError, match="same date"):
        parse_catalog(data)


def test_two_undated_versions_are_refused():
    data = catalog_data()
    data["plugins"]["web_search"]["prices"].append({"from": None, "per_unit": "0.01"})
    with pytest.raises(CatalogError):
        parse_catalog(data)


def test_model_max_input_is_capped_by_global():
    data = catalog_data()
    data["models"]["xingchen-plus-v2"]["max_input"] = 40_000
    assert parse_catalog(data).models["xingchen-plus-v2"].max_input == 32_000
    data["global_max_input_tokens"] = 20_000
    cat = parse_catalog(data)
    assert cat.global_max_input == 20_000
    assert cat.models["xingchen-base"].max_input == 6_500
    assert cat.models["xingchen-lite"].max_input == 20_000


@pytest.mark.parametrize("value", ["0.0001", "0.0000015", "1e-7"])
def test_token_price_needs_at_most_six_decimals_per_token(value):
    data = catalog_data()
    data["models"]["xingchen-lite"]["prices"][0]["input_per_1k"] = value
    with pytest.raises(CatalogError):
        parse_catalog(data)


@pytest.mark.parametrize("value", ["-0.004", "abc", "NaN", "sNaN", "Infinity", "", 0.004])
def test_bad_token_prices_are_catalog_errors(value):
    data = catalog_data()
    data["models"]["xingchen-base"]["prices"][0]["output_per_1k"] = value
    with pytest.raises(CatalogError):
        parse_catalog(data)


@pytest.mark.parametrize("value", ["-1", "abc", "NaN", "Infinity", "0.0000001", "1e30", 0.16])
def test_bad_plugin_prices_are_catalog_errors(value):
    # a per-unit price with more than 6 decimals would make billing refuse the amount later
    data = catalog_data()
    data["plugins"]["text_to_image"]["prices"][0]["per_unit"] = value
    with pytest.raises(CatalogError):
        parse_catalog(data)


def test_plugin_price_with_six_decimals_is_fine():
    data = catalog_data()
    data["plugins"]["web_search"]["prices"] = [
        {"from": None, "per_unit": "0"},
        {"from": "2024-10-01", "per_unit": "0.000001"},
    ]
    web = parse_catalog(data).plugins["web_search"]
    assert web.price_at(us("2024-09-30T23:59:59+08:00")).per_unit == Decimal("0")
    assert web.price_at(us("2024-10-01T00:00:00+08:00")).per_unit == Decimal("0.000001")


def test_plugin_unit_defaults_to_invocation():
    data = catalog_data()
    del data["plugins"]["rejection"]["unit"]
    assert parse_catalog(data).plugins["rejection"].unit == "invocation"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.pop("free_quota_tokens"),
        lambda d: d.pop("models"),
        lambda d: d["default_limits"].pop("tpm"),
        lambda d: d["models"]["xingchen-base"].pop("context"),
        lambda d: d["models"]["xingchen-base"]["prices"][0].pop("from"),
        lambda d: d["models"]["xingchen-base"]["prices"][0].update({"from": "2024-13-01"}),
        lambda d: d["models"]["xingchen-base"]["prices"][0].update({"from": 20240607}),
        lambda d: d["plugins"]["text_to_image"].pop("prices"),
        lambda d: d.update({"max_active_keys": "three"}),
    ],
)
def test_malformed_catalog_is_a_catalog_error(edit):
    data = catalog_data()
    edit(data)
    with pytest.raises(CatalogError):
        parse_catalog(data)


def test_load_catalog_from_file(tmp_path):
    data = catalog_data()
    data["version"] = "test-1"
    data["free_quota_tokens"] = 5
    path = tmp_path / "cat.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    cat = load_catalog(path)
    assert cat.version == "test-1"
    assert cat.free_quota_tokens == 5
    assert load_catalog(str(path)).version == "test-1"


def test_load_catalog_errors(tmp_path):
    with pytest.raises(CatalogError):
        load_catalog(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogError):
        load_catalog(bad)


def test_catalog_error_is_a_value_error():
    assert issubclass(CatalogError, ValueError)
