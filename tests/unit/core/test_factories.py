"""Every fact and record is built by name (facts.new_*, records.new_*): each builder must put each
value in the field of its name, so that two token counts or two amounts swapped in a builder
fail here rather than bill quietly wrong. Each field gets a value no other field has."""

from __future__ import annotations

import inspect
import typing
from decimal import Decimal
from typing import Any, Callable

import pytest

from pipeline.core import facts, records

BUILDERS: list[tuple[Callable[..., Any], type]] = [
    (facts.new_rejection, facts.Rejection),
    (facts.new_priced_usage, facts.PricedUsage),
    (facts.new_violation, facts.Violation),
    (facts.new_settlement, facts.Settlement),
    (facts.new_status_change, facts.StatusChange),
    (records.new_usage, records.Usage),
    (records.new_account_record, records.AccountRecord),
    (records.new_invalid, records.Invalid),
]


def distinct(hint: Any, i: int) -> Any:
    """A value of the field's type that no other field of the fact has (the compiled builders
    check the types of what they are given)."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint
    if base is int or base is type:  # compiled NamedTuples show `int | None` as `type`
        return 1000 + i
    if base is Decimal:
        return Decimal(i) + Decimal("0.000001")
    if base is str:
        return f"<{i}>"
    if base is tuple:  # compiled: the element types are erased
        return (f"<{i}>",)
    if typing.get_origin(base) is tuple:
        return (f"<{i}>",) if typing.get_args(base)[0] is str else ((f"<{i}>", i),)
    if base is dict or typing.get_origin(base) is dict:
        return {"field": i}
    raise AssertionError(f"no distinct value for {hint}")


@pytest.mark.parametrize(("builder", "kind"), BUILDERS, ids=lambda b: getattr(b, "__name__", ""))
def test_a_builder_puts_every_value_in_the_field_of_its_name(builder: Callable[..., Any], kind: type) -> None:
    values = {name: distinct(hint, i) for i, (name, hint) in enumerate(typing.get_type_hints(kind).items())}
    built = builder(**values)
    assert type(built) is kind
    assert built._asdict() == values


@pytest.mark.parametrize(("builder", "kind"), BUILDERS, ids=lambda b: getattr(b, "__name__", ""))
def test_a_builder_takes_every_field_by_name_and_nothing_else(builder: Callable[..., Any], kind: type) -> None:
    parameters = inspect.signature(builder).parameters.values()
    assert [p.name for p in parameters] == list(kind._fields)  # type: ignore[attr-defined]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty for p in parameters)


def test_every_fact_and_record_has_a_builder() -> None:
    kinds = {kind for _, kind in BUILDERS}
    named = {
        v
        for module in (facts, records)
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, tuple) and hasattr(v, "_fields") and v.__module__ == module.__name__
    }
    assert named == kinds
