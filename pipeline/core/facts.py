"""Facts the fold emits for each record; the edges turn them into ClickHouse rows and messages.

The facts are NamedTuples: immutable like frozen dataclasses, but built about five times faster
(one per call, so it shows in the throughput) and turned into insert columns with `zip(*rows)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, Sequence

from pipeline.core.tuples import namedtuple_of

BILLED = "billed"
REJECTED = "rejected"
DUPLICATE = "duplicate"
APPLIED = "applied"  # an account record that changed (or confirmed) the account

# The rejection reasons, each written once: the fold and validation return these names.
INVALID_SCHEMA = "invalid_schema"
UNAUTHORIZED = "unauthorized"  # a control record not signed by the pipeline's own tools (control.py)
OUT_OF_RANGE = "out_of_range"  # a given or derived value outside its column's range (column_ranges.py)
CONFLICTING_DUPLICATE = "conflicting_duplicate"
UNKNOWN_MODEL = "unknown_model"
UNKNOWN_PLUGIN = "unknown_plugin"
NO_PRICE_IN_FORCE = "no_price_in_force"
INPUT_LIMIT_EXCEEDED = "input_limit_exceeded"
CONTEXT_LIMIT_EXCEEDED = "context_limit_exceeded"
NOT_WHITELISTED = "not_whitelisted"
INVALID_API_KEY = "invalid_api_key"
API_KEY_LIMIT = "api_key_limit"
# BILLING_RULES §10, in precedence order: the first that applies is the one reported.
REASONS = (
    INVALID_SCHEMA,
    UNAUTHORIZED,
    OUT_OF_RANGE,
    CONFLICTING_DUPLICATE,
    UNKNOWN_MODEL,
    UNKNOWN_PLUGIN,
    NO_PRICE_IN_FORCE,
    INPUT_LIMIT_EXCEEDED,
    CONTEXT_LIMIT_EXCEEDED,
    NOT_WHITELISTED,
    INVALID_API_KEY,
    API_KEY_LIMIT,
)
# Not a call the rule book rejects but a `billing rebill` that lost a race: a record the rebill did
# not see changed one of its lines before the worker applied it; nothing of it is applied.
STALE_REBILL = "stale_rebill"


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


# Built by name (tests/unit/core/test_factories.py ties each builder to its fields): a swap of two
# values of one type would still type-check positionally. Compiled callers call these directly.
def new_rejection(
    *, account_id: str, record_id: str, event_id: str, kind: str, reason: str, detail: str, ts_us: int | None, raw: str, seq: int
) -> Rejection:
    """A Rejection from its fields by name."""
    return namedtuple_of(Rejection, account_id, record_id, event_id, kind, reason, detail, ts_us, raw, seq)


def new_priced_usage(
    *,
    account_id: str,
    event_id: str,
    ts_us: int,
    hour_us: int,
    api_key_id: str,
    model: str,
    channel: str,
    input_tokens: int,
    output_tokens: int,
    free_tokens: int,
    billed_input_tokens: int,
    billed_output_tokens: int,
    token_amount: Decimal,
    plugin_amount: Decimal,
    plugins: tuple[tuple[str, int], ...],
    flags: tuple[str, ...],
    seq: int,
) -> PricedUsage:
    """A PricedUsage from its fields by name."""
    return namedtuple_of(
        PricedUsage,
        account_id,
        event_id,
        ts_us,
        hour_us,
        api_key_id,
        model,
        channel,
        input_tokens,
        output_tokens,
        free_tokens,
        billed_input_tokens,
        billed_output_tokens,
        token_amount,
        plugin_amount,
        plugins,
        flags,
        seq,
    )


def new_violation(
    *, account_id: str, event_id: str, ts_us: int, limit: str, window_start_us: int, observed: int, allowed: int, seq: int
) -> Violation:
    """A Violation from its fields by name."""
    return namedtuple_of(Violation, account_id, event_id, ts_us, limit, window_start_us, observed, allowed, seq)


def new_settlement(
    *,
    account_id: str,
    hour_us: int,
    kind: str,
    amount: Decimal,
    voucher_part: Decimal,
    cash_part: Decimal,
    debt_added: Decimal,
    debt_after: Decimal,
    balance_after: Decimal,
    seq: int,
) -> Settlement:
    """A Settlement from its fields by name."""
    return namedtuple_of(Settlement, account_id, hour_us, kind, amount, voucher_part, cash_part, debt_added, debt_after, balance_after, seq)


def new_status_change(*, account_id: str, status: str, debt: Decimal, cash_balance: Decimal, ts_us: int, seq: int) -> StatusChange:
    """A StatusChange from its fields by name."""
    return namedtuple_of(StatusChange, account_id, status, debt, cash_balance, ts_us, seq)
