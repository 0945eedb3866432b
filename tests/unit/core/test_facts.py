"""Facts built the fast way (tuples.namedtuple_of, used on the per-record path) are the NamedTuples."""

from decimal import Decimal

import pytest

from pipeline.core.facts import PricedUsage, Violation
from pipeline.core.tuples import namedtuple_of
from pipeline.store.sink import SeenRow


@pytest.mark.parametrize(
    "kind, values",
    [
        (PricedUsage, ("a", "e", 1, 0, "k", "m", "api", 10, 5, 0, 10, 5, Decimal("0.1"), Decimal("0"), (("p", 1),), ("qps",), 7)),
        (Violation, ("a", "e", 1, "qps", 0, 3, 2, 7)),
    ],
)
def test_fact_is_the_namedtuple(kind, values):
    built = namedtuple_of(kind, *values)
    assert built == kind(*values) and type(built) is kind
    assert built._asdict() == kind(*values)._asdict()  # field names line up


def test_fact_refuses_a_wrong_number_of_values():
    with pytest.raises(TypeError, match="SeenRow has 5 fields, got 3 values"):
        namedtuple_of(SeenRow, "a", "e", "d")
    with pytest.raises(TypeError, match="has 5 fields, got 6"):
        namedtuple_of(SeenRow, "a", "e", "d", 1, 2, 3)
