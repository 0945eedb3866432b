"""API key rules (BILLING_RULES §7)."""

from __future__ import annotations

from pipeline.core.state import AccountState


def key_valid_for_call(state: AccountState, api_key_id: str, ts_us: int) -> bool:
    """Known to the account (its creation was applied earlier in the log) and not yet revoked."""
    key = state.keys.get(api_key_id)
    return key is not None and key.active_at(ts_us)


def keys_not_revoked_by(state: AccountState, ts_us: int) -> int:
    """Keys that would still be active alongside a key created at ts_us."""
    return sum(1 for key in state.keys.values() if key.active_at(ts_us))
