"""Hourly settlement against vouchers and cash, debt and arrears (BILLING_RULES §9).

Pure functions over the account state. Hours close on the account's own event-time clock (see
docs/interpretations.md, Settlement), so the stream and any replay settle identically.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Sequence

from pipeline.core.facts import Settlement, StatusChange, new_settlement, new_status_change
from pipeline.core.state import NO_HOURS, ZERO, AccountState, Voucher
from pipeline.core.timestamps import US_PER_HOUR, US_PER_MINUTE

ACTIVE = "active"
ARREARS = "arrears"


def status_of(state: AccountState) -> str:
    return ARREARS if state.debt > 0 else ACTIVE


def _voucher_order(voucher: Voucher) -> tuple[bool, int, str]:
    """Earliest expiry first, vouchers that never expire last."""
    return (voucher.expires_us is None, voucher.expires_us or 0, voucher.voucher_id)


def settle_amount(state: AccountState, amount: Decimal, due_us: int) -> tuple[Decimal, Decimal, Decimal]:
    """Charge `amount`: usable vouchers first, then cash; the rest becomes debt.

    Returns (voucher part, cash part, debt added). A voucher is usable when it has not expired
    at `due_us`, the end of the hour being settled. A negative amount (a rebill lowered an hour
    already settled) is a refund: it pays debt first (negative debt added), then cash (negative
    cash part); vouchers are not given back.
    """
    if amount < 0:  # a rebill lowered a settled hour: the refund pays debt first, then cash
        refund = -amount
        paid = min(refund, state.debt)
        state.debt -= paid
        state.cash_balance += refund - paid
        return ZERO, -(refund - paid), -paid
    left = amount
    voucher_part = ZERO
    for voucher in sorted(state.vouchers.values(), key=_voucher_order):
        if left <= 0:
            break
        if voucher.remaining <= 0 or (voucher.expires_us is not None and voucher.expires_us <= due_us):
            continue
        used = min(voucher.remaining, left)
        voucher.remaining -= used
        voucher_part += used
        left -= used
    cash_part = min(max(state.cash_balance, ZERO), left)
    state.cash_balance -= cash_part
    left -= cash_part
    state.debt += left
    return voucher_part, cash_part, left


NOTHING_CLOSED: tuple[Sequence[Settlement], Sequence[StatusChange]] = ((), ())


def hour_closed(hour: int, grace_us: int, clock_us: int) -> bool:
    """Whether the hour starting at `hour` is closed at event time `clock_us`: its end plus the
    grace is at or before that clock (BILLING_RULES §9). The one statement of the rule: the fold
    settles by it on the account's clock, the worker ticks idle accounts by it on its partition's
    watermark."""
    return hour + US_PER_HOUR + grace_us <= clock_us


def reopen(state: AccountState, hour: int, grace: int) -> None:
    """Open an hour for settlement again (or for the first time). Call before the record's own
    line is created: an hour that had lines and is already past its close was settled, so what
    it settles next is an adjustment."""
    if hour not in state.open_hours:
        if hour in state.line_hours and hour_closed(hour, grace, state.max_ts_us):
            state.adjusting = state.adjusting | {hour}
        state.open_hours[hour] = ZERO


def owe(state: AccountState, hour: int, amount: Decimal, grace: int) -> None:
    """Add to an hour's unsettled amount, reopening it (an adjustment when it was settled)."""
    reopen(state, hour, grace)
    state.open_hours[hour] += amount


def close_hours(state: AccountState, grace_us: int, seq: int) -> tuple[Sequence[Settlement], Sequence[StatusChange]]:
    """Settle every open hour whose end plus the grace is at or before the account clock."""
    if not state.open_hours or not hour_closed(min(state.open_hours), grace_us, state.max_ts_us):
        return NOTHING_CLOSED  # the common case, per record: nothing to close yet
    ready = sorted(h for h in state.open_hours if hour_closed(h, grace_us, state.max_ts_us))
    before = status_of(state)
    settlements = []
    for hour in ready:
        amount = state.open_hours.pop(hour)
        adjustment = hour in state.adjusting
        if adjustment:
            state.adjusting = (state.adjusting - {hour}) or NO_HOURS
        voucher_part, cash_part, debt_added = settle_amount(state, amount, hour + US_PER_HOUR)
        if not adjustment and (state.last_settled_hour is None or hour > state.last_settled_hour):
            state.last_settled_hour = hour
        settlements.append(
            new_settlement(
                account_id=state.account_id,
                hour_us=hour,
                kind="adjustment" if adjustment else "regular",
                amount=amount,
                voucher_part=voucher_part,
                cash_part=cash_part,
                debt_added=debt_added,
                debt_after=state.debt,
                balance_after=state.cash_balance,
                seq=seq,
            )
        )
    return settlements, _status_change(state, before, seq)


def recharge(state: AccountState, amount: Decimal, seq: int) -> list[StatusChange]:
    """Recharges pay outstanding debt first; the rest goes to the cash balance."""
    before = status_of(state)
    paid = min(amount, state.debt)
    state.debt -= paid
    state.cash_balance += amount - paid
    return _status_change(state, before, seq)


def _status_change(state: AccountState, before: str, seq: int) -> list[StatusChange]:
    after = status_of(state)
    if after == before:
        return []
    return [
        new_status_change(
            account_id=state.account_id, status=after, debt=state.debt, cash_balance=state.cash_balance, ts_us=state.max_ts_us, seq=seq
        )
    ]


def grace_us(minutes: int) -> int:
    return minutes * US_PER_MINUTE
