"""Exact decimal amounts at 6 places; no float, no rounding."""

from decimal import Decimal

import pytest

from pipeline.core.pricing import exact6, plugin_amount, token_amount


def test_token_amount_exact():
    amount = token_amount(1000, 500, Decimal("0.000004"), Decimal("0.000012"))
    assert amount == Decimal("0.010000")
    assert str(amount) == "0.010000"


def test_token_amount_single_tokens_keep_six_places():
    assert str(token_amount(1, 0, Decimal("0.000002"), Decimal("0.000006"))) == "0.000002"
    assert str(token_amount(0, 1, Decimal("0.000002"), Decimal("0.000006"))) == "0.000006"
    assert str(token_amount(0, 0, Decimal("0.00004"), Decimal("0.00012"))) == "0.000000"


def test_token_amount_large_counts_exact():
    # 1e9 tokens of each at max's prices: 40,000 + 120,000
    assert token_amount(10**9, 10**9, Decimal("0.00004"), Decimal("0.00012")) == Decimal("160000.000000")


def test_plugin_amount():
    assert str(plugin_amount(3, Decimal("0.16"))) == "0.480000"
    assert str(plugin_amount(5, Decimal("0"))) == "0.000000"
    assert str(plugin_amount(0, Decimal("0.16"))) == "0.000000"


def test_exact6_refuses_rounding():
    assert str(exact6(Decimal("1.5"))) == "1.500000"
    with pytest.raises(ArithmeticError):
        exact6(Decimal("0.0000001"))
    with pytest.raises(ArithmeticError):
        token_amount(1, 0, Decimal("0.0000005"), Decimal("0"))
