"""Rejection reasons with a one-line meaning each, in the rule book's order (BILLING_RULES §10):
what `billing reasons` prints and what `billing rejected --reason` accepts.

The codes the fold reports are `pipeline.core.facts.REASONS` (the core's list); this table adds the
words for people, and the codes checked right after the schema (`unauthorized`, `out_of_range`)
and `stale_rebill` (a `billing rebill` that lost a race, not a rule). A unit test keeps the two
in step: every code of the core is here, in the same order.
"""

from __future__ import annotations

from pipeline.core.facts import STALE_REBILL

MEANINGS: dict[str, str] = {
    "invalid_schema": "the record breaks the input schema (a field missing, of the wrong type, or not RFC 3339)",
    "unauthorized": "a control record type that only the pipeline's own tools may send",
    "out_of_range": "a given or derived value (amount, balance, count) outside its ClickHouse column's range",
    "conflicting_duplicate": "an event_id already applied with a different payload; the first one stands",
    "unknown_model": "the model is not in the price catalog",
    "unknown_plugin": "a plugin is not in the price catalog",
    "no_price_in_force": "the model or a plugin has no price in force at the call's time",
    "input_limit_exceeded": "more input tokens than the model's input limit",
    "context_limit_exceeded": "input plus output tokens beyond the model's context window",
    "not_whitelisted": "the model is whitelist-only and the account is not on its whitelist",
    "invalid_api_key": "the API key is not an active key of the account at the call's time",
    "api_key_limit": "an api_key.created beyond the account's limit of active keys",
    STALE_REBILL: "a `billing rebill` whose lines a later call changed meanwhile; run the same rebill again",
}
REASONS: tuple[str, ...] = tuple(MEANINGS)


def rows() -> list[dict[str, str]]:
    return [{"reason": reason, "meaning": meaning} for reason, meaning in MEANINGS.items()]
