"""Rejection reasons with a one-line meaning each, in the rule book's order (BILLING_RULES §10):
what `billing reasons` prints and what `billing rejected --reason` accepts.

The codes are `pipeline.core.facts`' (REASONS, in precedence order); this table adds the words
for people, and `stale_rebill` (a `billing rebill` that lost a race, not a rule). A unit test keeps
the two in step: every code of the core is here, in the same order.
"""

from __future__ import annotations

from pipeline.core import facts
from pipeline.core.facts import STALE_REBILL

MEANINGS: dict[str, str] = {
    facts.INVALID_SCHEMA: "the record breaks the input schema (a field missing, of the wrong type, or not RFC 3339)",
    facts.UNAUTHORIZED: "a control record type that only the pipeline's own tools may send",
    facts.OUT_OF_RANGE: "a given or derived value (amount, balance, count) outside its ClickHouse column's range",
    facts.CONFLICTING_DUPLICATE: "an event_id already applied with a different payload; the first one stands",
    facts.UNKNOWN_MODEL: "the model is not in the price catalog",
    facts.UNKNOWN_PLUGIN: "a plugin is not in the price catalog",
    facts.NO_PRICE_IN_FORCE: "the model or a plugin has no price in force at the call's time",
    facts.INPUT_LIMIT_EXCEEDED: "more input tokens than the model's input limit",
    facts.CONTEXT_LIMIT_EXCEEDED: "input plus output tokens beyond the model's context window",
    facts.NOT_WHITELISTED: "the model is whitelist-only and the account is not on its whitelist",
    facts.INVALID_API_KEY: "the API key is not an active key of the account at the call's time",
    facts.API_KEY_LIMIT: "an api_key.created beyond the account's limit of active keys",
    STALE_REBILL: "a `billing rebill` whose lines a later call changed meanwhile; run the same rebill again",
}
REASONS: tuple[str, ...] = tuple(MEANINGS)


def rows() -> list[dict[str, str]]:
    return [{"reason": reason, "meaning": meaning} for reason, meaning in MEANINGS.items()]
