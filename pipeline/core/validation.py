"""Why a well-formed usage record cannot be billed (BILLING_RULES §2-§4, §7, §10 precedence).

Schema failures and duplicates are decided before this, in the fold; the checks here run in
the order of the rule book so that the first reason that applies is the one reported.
"""

from __future__ import annotations

from pipeline.core.catalog import Catalog, ModelSpec
from pipeline.core.facts import (
    CONTEXT_LIMIT_EXCEEDED,
    INPUT_LIMIT_EXCEEDED,
    INVALID_API_KEY,
    NO_PRICE_IN_FORCE,
    NOT_WHITELISTED,
    UNKNOWN_MODEL,
    UNKNOWN_PLUGIN,
)
from pipeline.core.keys import key_valid_for_call
from pipeline.core.records import Usage
from pipeline.core.state import AccountState


def usage_rejection(usage: Usage, state: AccountState, catalog: Catalog) -> tuple[str, str] | None:
    """(reason, detail) for the first rule the call breaks, or None when it can be billed."""
    model = catalog.models.get(usage.model)
    if model is None:
        return UNKNOWN_MODEL, f"model {usage.model!r} is not in catalog {catalog.version}"
    for name, _ in usage.plugins:
        if name not in catalog.plugins:
            return UNKNOWN_PLUGIN, f"plugin {name!r} is not in catalog {catalog.version}"
    if model.price_at(usage.ts_us) is None:
        return NO_PRICE_IN_FORCE, f"{usage.model} has no price in force at {usage.ts_us}us in catalog {catalog.version}"
    for name, _ in usage.plugins:
        if catalog.plugins[name].price_at(usage.ts_us) is None:
            return NO_PRICE_IN_FORCE, f"plugin {name} has no price in force then in catalog {catalog.version}"
    return _limit_rejection(usage, model) or _access_rejection(usage, state, model)


def _limit_rejection(usage: Usage, model: ModelSpec) -> tuple[str, str] | None:
    if usage.input_tokens > model.max_input:
        return INPUT_LIMIT_EXCEEDED, f"{usage.input_tokens} input tokens > {model.max_input} for {model.name}"
    total = usage.input_tokens + usage.output_tokens
    if model.context is not None and total > model.context:
        return CONTEXT_LIMIT_EXCEEDED, f"{total} tokens > context {model.context} of {model.name}"
    return None


def _access_rejection(usage: Usage, state: AccountState, model: ModelSpec) -> tuple[str, str] | None:
    if model.whitelist_only and model.name not in state.whitelist:
        return NOT_WHITELISTED, f"account is not whitelisted for {model.name}"
    if not key_valid_for_call(state, usage.api_key_id, usage.ts_us):
        return INVALID_API_KEY, f"key {usage.api_key_id!r} is not an active key of this account at that time"
    return None
