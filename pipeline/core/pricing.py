"""Amounts from billed quantities and the prices in force (BILLING_RULES §1-3). Decimal only."""

from __future__ import annotations

from decimal import Decimal

MICRO = Decimal("0.000001")


def token_amount(billed_input: int, billed_output: int, input_per_token: Decimal, output_per_token: Decimal) -> Decimal:
    """Exact at 6 decimal places because every per-token price has at most 6."""
    return exact6(billed_input * input_per_token + billed_output * output_per_token)


def plugin_amount(units: int, per_unit: Decimal) -> Decimal:
    return exact6(units * per_unit)


def exact6(amount: Decimal) -> Decimal:
    """Fix an amount at 6 places; a price with more places would need rounding, which we refuse."""
    fixed = amount.quantize(MICRO)
    if fixed != amount:
        raise ArithmeticError(f"amount {amount} is not exact at 6 decimal places")
    return fixed
