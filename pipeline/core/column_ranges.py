"""Every value that lands in a ClickHouse column fits it (CONTRACT: `out_of_range`).

A value the bill tables cannot hold does not fail one record: the insert of the whole unit fails,
and before this check every later record of every account waited behind it. So the fold checks,
before a record changes anything, each value it gives (amounts, counts) and each value it would
derive (balances, debts, hour totals, line sums) against the range of the column it lands in, and
rejects the record as `out_of_range` instead. The types are those of schemas/clickhouse/ (a unit
test ties them to the DDL): money is Decimal(18, 6), counts UInt64.

Derived values are judged where the fold can compute them: a usage record's after its price is
known (an unknown model is `unknown_model` first), an account record's before it is applied. A
duplicate delivery stays a duplicate: the derived check runs after the identity check.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Iterable

MONEY_TYPE = "Decimal(18, 6)"
COUNT_TYPE = "UInt64"


def decimal_bound(type_name: str) -> Decimal:
    """The largest magnitude a ClickHouse Decimal(P, S) holds: P digits, S of them decimals."""
    match = re.fullmatch(r"Decimal\((\d+),\s*(\d+)\)", type_name)
    if match is None:
        raise ValueError(f"not a Decimal(P, S) type: {type_name!r}")
    precision, scale = int(match.group(1)), int(match.group(2))
    return Decimal(10) ** (precision - scale) - Decimal(1).scaleb(-scale)


def unsigned_bound(type_name: str) -> int:
    match = re.fullmatch(r"UInt(8|16|32|64)", type_name)
    if match is None:
        raise ValueError(f"not a UInt type: {type_name!r}")
    return 2 ** int(match.group(1)) - 1


MAX_MONEY = decimal_bound(MONEY_TYPE)
MAX_COUNT = unsigned_bound(COUNT_TYPE)


def money_fits(value: Decimal) -> bool:
    return -MAX_MONEY <= value <= MAX_MONEY


def count_fits(value: int) -> bool:
    return 0 <= value <= MAX_COUNT


def money_problem(what: str, value: Decimal) -> str | None:
    """Why `value` cannot be written as money, or None."""
    if money_fits(value):
        return None
    return f"{what} would be {value}, outside the {MONEY_TYPE} range of +-{MAX_MONEY}"


def count_problem(what: str, value: int) -> str | None:
    if count_fits(value):
        return None
    return f"{what} would be {value}, outside the {COUNT_TYPE} range 0..{MAX_COUNT}"


def first_problem(problems: Iterable[str | None]) -> str | None:
    for problem in problems:
        if problem is not None:
            return problem
    return None
