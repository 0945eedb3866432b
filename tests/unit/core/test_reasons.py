"""The reasons `billing reasons` lists and `billing rejected --reason` accepts stay in step with
the codes the fold reports, in the rule book's order."""

from __future__ import annotations

from pipeline.core import facts, reasons


def test_every_code_of_the_core_is_listed_in_the_same_order() -> None:
    listed = [r for r in reasons.REASONS if r in facts.REASONS]
    assert listed == list(facts.REASONS)


def test_rule_book_order_with_the_checks_after_the_schema() -> None:
    assert reasons.REASONS[:4] == ("invalid_schema", "unauthorized", "out_of_range", "conflicting_duplicate")
    assert reasons.REASONS[-1] == facts.STALE_REBILL
    assert all(m and "\n" not in m for m in reasons.MEANINGS.values())
