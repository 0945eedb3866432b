"""Facts the fold emits for each record; the edges turn them into ClickHouse rows and messages.

The facts are NamedTuples: immutable like frozen dataclasses, but built about five times faster
(one per call, so it shows in the throughput) and turned into insert columns with `zip(*rows)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, Sequence


BILLED = "billed"
REJECTED = "rejected"
DUPLICATE = "duplicate"
APPLIED = "applied"  # an account record that changed (or confirmed) the account

# BILLING_RULES §10, in precedence order: the first that applies is the one reported.
REASONS = (
    "invalid_schema",
    "unauthorized",
    "out_of_range",
    "conflicting_duplicate",
    "unknown_model",
    "unknown_plugin",
    "no_price_in_force",
    "input_limit_exceeded",
    "context_limit_exceeded",
    "not_whitelisted",
    "invalid_api_key",
    "api_key_limit",
)
# Not a call the rule book rejects but a `billing rebill` that lost a race: a record the rebill did
# not see changed one of its lines before the worker applied it; nothing of it is applied.
STALE_REBILL = "stale_rebill"
INVALID_SCHEMA = "invalid_schema"
UNAUTHORIZED = "unauthorized"  # a control record not signed by the pipeline's own tools (control.py)
OUT_OF_RANGE = "out_of_range"  # a given or derived value outside its column's range (column_ranges.py)


class Rejection(NamedTuple):
    account_id: str
    record_id: str  # event_id, or the record's content identity
    event_id: str
    kind: str
    reason: str
    detail: str
    ts_us: int | None
    raw: str
    seq: int


class PricedUsage(NamedTuple):
    account_id: str
    event_id: str
    ts_us: int
    hour_us: int
    api_key_id: str
    model: str
    channel: str
    input_tokens: int
    output_tokens: int
    free_tokens: int
    billed_input_tokens: int
    billed_output_tokens: int
    token_amount: Decimal
    plugin_amount: Decimal
    plugins: tuple[tuple[str, int], ...]
    flags: tuple[str, ...]
    seq: int


class Violation(NamedTuple):
    account_id: str
    event_id: str
    ts_us: int
    limit: str  # qps | qpm | tpm
    window_start_us: int
    observed: int  # requests (qps, qpm) or tokens (tpm) in the window, this call included
    allowed: int
    seq: int


class Settlement(NamedTuple):
    account_id: str
    hour_us: int
    kind: str  # regular | adjustment
    amount: Decimal
    voucher_part: Decimal
    cash_part: Decimal
    debt_added: Decimal
    debt_after: Decimal
    balance_after: Decimal
    seq: int


class StatusChange(NamedTuple):
    """What the API gateway reads to block (arrears) or unblock (active) an account."""

    account_id: str
    status: str
    debt: Decimal
    cash_balance: Decimal
    ts_us: int  # the account clock when it changed
    seq: int


@dataclass(slots=True, init=False)  # __init__ by hand: compiled, a dataclass's generated one stays interpreted
class Outcome:
    """What one record did. The three fact lists are a shared empty tuple unless the record made
    some (most make none): no lists built and freed per record. The bill lines and rate windows a
    record changed are found by their revision (the record's seq), not listed here."""

    status: str
    claimed: bool  # the record's identity is now taken: a re-send is a duplicate
    rejection: Rejection | None
    priced: PricedUsage | None
    violations: Sequence[Violation]
    settlements: Sequence[Settlement]
    status_changes: Sequence[StatusChange]

    def __init__(self, status: str, rejection: Rejection | None = None) -> None:
        self.status = status
        self.claimed = False
        self.rejection = rejection
        self.priced = None
        self.violations = ()
        self.settlements = ()
        self.status_changes = ()
