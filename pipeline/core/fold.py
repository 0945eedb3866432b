"""The heart of billing: one account's state + one record -> new state + facts (DESIGN §1).

`apply` is pure apart from mutating the state it is given (for speed; the caller owns it). The
stream worker and a rebill both call it in the account's log order, so they cannot disagree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pipeline.core.catalog import Catalog
from pipeline.core.column_ranges import count_problem, first_problem, money_problem
from pipeline.core.facts import (
    API_KEY_LIMIT,
    APPLIED,
    BILLED,
    CONFLICTING_DUPLICATE,
    DUPLICATE,
    INVALID_API_KEY,
    OUT_OF_RANGE,
    REJECTED,
    STALE_REBILL,
    Outcome,
    new_priced_usage,
    new_rejection,
    new_violation,
)
from pipeline.core.keys import keys_not_revoked_by
from pipeline.core.pricing import MICRO, plugin_amount, token_amount
from pipeline.core.quota import free_left, split_free
from pipeline.core.records import AccountRecord, Invalid, Record, Usage
from pipeline.core.settlement import close_hours, owe, recharge, reopen
from pipeline.core.state import LINE_COUNTS, NO_MODELS, ZERO, AccountState, KeyState, Line, LineKey, Voucher, Window
from pipeline.core.timestamps import hour_start, parse_ts
from pipeline.core.validation import usage_rejection
from pipeline.core.windows import WindowKey, violated, window_keys

PLUGIN_ITEM_PREFIX = "plugin:"  # the SQL views and bill_hour_totals' backfill test the same prefix (schemas/clickhouse)


def plugin_item(name: str) -> str:
    """A plugin's bill line item: its calls are metered on a line of their own beside the tokens."""
    return PLUGIN_ITEM_PREFIX + name


def apply(state: AccountState, record: Record, catalog: Catalog) -> Outcome:
    state.seq += 1
    if isinstance(record, Invalid):  # invalid_schema, unauthorized, or a given value out of range
        return _reject(state, record.identity, record.event_id, record.kind, record.reason, record.detail, record.ts_us, record.raw)
    earlier = state.seen.get(record.identity)
    if earlier is not None:
        if earlier == record.digest:
            state.duplicates += 1
            return Outcome(DUPLICATE)
        detail = f"{record.identity!r} was already applied with a different payload; the first stands"
        record_id = f"{record.identity}#{record.digest}"  # its own rejection row beside the first's
        return _reject(state, record_id, _event_id(record), record.kind, CONFLICTING_DUPLICATE, detail, record.ts_us, record.raw)
    state.seen[record.identity] = record.digest
    state.max_ts_us = max(state.max_ts_us, record.ts_us)
    if isinstance(record, Usage):
        outcome = _apply_usage(state, record, catalog)
    else:
        outcome = _apply_account_record(state, record, catalog, Outcome(APPLIED))
    outcome.claimed = True
    settlements, changes = close_hours(state, catalog.settlement_grace_us, state.seq)
    if settlements:
        outcome.settlements = settlements
    if changes:
        outcome.status_changes = [*outcome.status_changes, *changes]
    return outcome


def is_api_call(usage: Usage) -> bool:
    """An `api` call (BILLING_RULES §4): billed, uses the free quota, counted in rate windows. A
    `console` call is validated alike and appears in its hour's lines with amount 0, and is none
    of those. The one statement of the rule: the worker loads rate windows by it too."""
    return usage.channel == "api"


def _event_id(record: Record) -> str:
    return record.event_id if isinstance(record, Usage) else ""


def _reject(
    state: AccountState, record_id: str, event_id: str, kind: str, reason: str, detail: str, ts_us: int | None, raw: str
) -> Outcome:
    rejection = new_rejection(
        account_id=state.account_id,
        record_id=record_id,
        event_id=event_id,
        kind=kind,
        reason=reason,
        detail=detail,
        ts_us=ts_us,
        raw=raw,
        seq=state.seq,
    )
    return Outcome(REJECTED, rejection=rejection)


def _apply_usage(state: AccountState, usage: Usage, catalog: Catalog) -> Outcome:
    problem = usage_rejection(usage, state, catalog)
    if problem is not None:
        return _reject(state, usage.identity, usage.event_id, usage.kind, problem[0], problem[1], usage.ts_us, usage.raw)
    billable = is_api_call(usage)
    model = catalog.models[usage.model]
    price = model.price_at(usage.ts_us)
    assert price is not None  # validated above
    free_in, free_out = 0, 0
    if billable:
        free_in, free_out = split_free(free_left(catalog.free_quota_tokens, state.free_used), usage.input_tokens, usage.output_tokens)
    free_tokens = free_in + free_out
    billed_in = usage.input_tokens - free_in if billable else 0
    billed_out = usage.output_tokens - free_out if billable else 0
    amount = token_amount(billed_in, billed_out, price.input_per_token, price.output_per_token)
    charges = _plugin_charges(usage, catalog, billable)
    plugins_total = sum((charge for _, _, charge in charges), ZERO)
    hour = hour_start(usage.ts_us)
    overflow = _usage_out_of_range(state, usage, hour, amount, charges, amount + plugins_total)
    if overflow is not None:
        return _reject(state, usage.identity, usage.event_id, usage.kind, OUT_OF_RANGE, overflow, usage.ts_us, usage.raw)
    state.free_used += free_tokens
    owe(state, hour, amount + plugins_total, catalog.settlement_grace_us)
    outcome = Outcome(BILLED)
    line = _line(state, (hour, usage.api_key_id, usage.model))
    line.requests += 1
    line.input_tokens += usage.input_tokens
    line.output_tokens += usage.output_tokens
    line.free_tokens += free_tokens
    line.billed_input_tokens += billed_in
    line.billed_output_tokens += billed_out
    line.amount += amount
    for name, units, charge in charges:
        pline = _line(state, (hour, usage.api_key_id, plugin_item(name)))
        pline.requests += 1
        pline.quantity += units
        pline.amount += charge
    flags: tuple[str, ...] = ()
    if billable:
        flags = _count_in_windows(state, outcome, usage, catalog)
    outcome.priced = new_priced_usage(
        account_id=state.account_id,
        event_id=usage.event_id,
        ts_us=usage.ts_us,
        hour_us=hour,
        api_key_id=usage.api_key_id,
        model=usage.model,
        channel=usage.channel,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        free_tokens=free_tokens,
        billed_input_tokens=billed_in,
        billed_output_tokens=billed_out,
        token_amount=amount,
        plugin_amount=plugins_total,
        plugins=usage.plugins,
        flags=flags,
        seq=state.seq,
    )
    return outcome


def _exposure(state: AccountState) -> Decimal:
    """A bound on every balance, debt and settlement the account's money can come to: settling
    only moves money between open hours, vouchers, cash and debt."""
    return abs(state.cash_balance) + state.debt + sum((abs(v) for v in state.open_hours.values()), ZERO)


def _usage_out_of_range(
    state: AccountState, usage: Usage, hour: int, amount: Decimal, charges: list[tuple[str, int, Decimal]], total: Decimal
) -> str | None:
    """The first derived value of this call its column cannot hold (column_ranges), or None. Rate
    windows need no check: a call has at most 2e9 tokens, so a minute would need 9e9 calls."""
    line = state.lines.get((hour, usage.api_key_id, usage.model))
    problems: list[str | None] = []
    if line is not None:
        problems += [
            money_problem("the bill line's amount", line.amount + amount),
            count_problem("the bill line's requests", line.requests + 1),
            count_problem("the bill line's input tokens", line.input_tokens + usage.input_tokens),
            count_problem("the bill line's output tokens", line.output_tokens + usage.output_tokens),
        ]
    for name, units, charge in charges:
        pline = state.lines.get((hour, usage.api_key_id, plugin_item(name)))
        if pline is not None:
            problems += [
                money_problem(f"the plugin:{name} line's amount", pline.amount + charge),
                count_problem(f"the plugin:{name} line's quantity", pline.quantity + units),
            ]
    problems.append(money_problem("the account's balances and debt", _exposure(state) + abs(total)))
    return first_problem(problems)


def _account_record_out_of_range(state: AccountState, record: AccountRecord) -> str | None:
    """The first derived value of an account record its column cannot hold, or None."""
    f = record.fields
    if record.kind == "credit.recharge":
        amount = Decimal(f["amount"])
        return money_problem("the cash balance", state.cash_balance + amount - min(amount, state.debt))
    if record.kind == "rebill.lines":
        problems: list[str | None] = []
        delta = ZERO
        for spec in f["lines"]:
            key = _spec_key(spec)
            problems += [count_problem(f"the line's {name}", spec[name]) for name in LINE_COUNTS]
            new = Decimal(spec["amount"])
            problems.append(money_problem("the line's amount", new))
            delta += abs(new - (state.lines[key].amount if key in state.lines else ZERO))
        problems.append(money_problem("the account's balances and debt", _exposure(state) + delta))
        return first_problem(problems)
    return None


def _line(state: AccountState, key: tuple[int, str, str]) -> Line:
    """The line, marked as changed by this record (its revision: the processor writes the lines
    whose revision is above the account's seq before a unit)."""
    line = state.line(key)
    line.revision = state.seq
    return line


def _plugin_charges(usage: Usage, catalog: Catalog, billable: bool) -> list[tuple[str, int, Decimal]]:
    """(plugin, units, charge) per plugin of the call; console calls are free."""
    charges = []
    for name, units in usage.plugins:
        unit_price = catalog.plugins[name].price_at(usage.ts_us)
        assert unit_price is not None  # validated before
        charges.append((name, units, plugin_amount(units, unit_price.per_unit) if billable else ZERO))
    return charges


def _apply_rebilled_lines(state: AccountState, lines: list[dict[str, Any]], grace: int) -> None:
    """A rebill's revised lines replace the current ones; the money difference is owed (or given
    back) through the hour's settlement, as an adjustment when the hour was settled already."""
    for spec in lines:
        key = _spec_key(spec)
        previous = state.lines[key].amount if key in state.lines else ZERO
        reopen(state, key[0], grace)
        line = _line(state, key)
        for name in LINE_COUNTS:
            setattr(line, name, spec[name])
        line.amount = Decimal(spec["amount"]).quantize(MICRO)
        state.open_hours[key[0]] += line.amount - previous


def _spec_key(spec: dict[str, Any]) -> LineKey:
    """The bill line a rebill's line spec names."""
    return hour_start(parse_ts(spec["hour"])), spec["api_key_id"], spec["item"]


def _stale_line(state: AccountState, lines: list[dict[str, Any]]) -> str | None:
    """Why a rebill's lines cannot replace the current ones, or None. Each line names the revision
    the rebill read (`base_revision`); another revision now means a record the rebill did not
    replay (a late call) changed the line since, and replacing it would drop that record."""
    for spec in lines:
        if "base_revision" not in spec:
            continue  # written before the check existed
        key = _spec_key(spec)
        current = state.lines[key].revision if key in state.lines else 0
        if current != spec["base_revision"]:
            return (
                f"line {spec['hour']} {spec['api_key_id']} {spec['item']} changed after the rebill read it (revision "
                f"{spec['base_revision']} then, {current} now); nothing of this rebill was applied to the account: "
                "run the same `billing rebill` again"
            )
    return None


def _count_in_windows(state: AccountState, outcome: Outcome, usage: Usage, catalog: Catalog) -> tuple[str, ...]:
    """Count an API call in its second and minute windows; flag and report each limit exceeded."""
    limits = state.limits or catalog.default_limits
    tokens = usage.input_tokens + usage.output_tokens
    second_key, minute_key = window_keys(usage.ts_us)
    second = _window(state, second_key, tokens)
    minute = _window(state, minute_key, tokens)
    flags = violated(limits, second.requests, minute.requests, minute.tokens)
    if not flags:
        return ()
    violations = []  # a quarter of the calls in the bench's workload break a limit
    for flag in flags:
        if flag == "qps":
            start, observed, allowed = second_key[1], second.requests, limits.qps
        elif flag == "qpm":
            start, observed, allowed = minute_key[1], minute.requests, limits.qpm
        else:
            start, observed, allowed = minute_key[1], minute.tokens, limits.tpm
        violations.append(
            new_violation(
                account_id=state.account_id,
                event_id=usage.event_id,
                ts_us=usage.ts_us,
                limit=flag,
                window_start_us=start,
                observed=observed,
                allowed=allowed,
                seq=state.seq,
            )
        )
    outcome.violations = violations
    return flags


def _window(state: AccountState, key: WindowKey, tokens: int) -> Window:
    window = state.windows.get(key)
    if window is None:
        window = state.windows[key] = Window()
    window.requests += 1
    window.tokens += tokens
    window.revision = state.seq
    return window


def _apply_account_record(state: AccountState, record: AccountRecord, catalog: Catalog, outcome: Outcome) -> Outcome:
    f = record.fields
    problem = _account_record_out_of_range(state, record)
    if problem is not None:
        return _reject(state, record.identity, "", record.kind, OUT_OF_RANGE, problem, record.ts_us, record.raw)
    if record.kind == "api_key.created":
        key_id = f["api_key_id"]
        if key_id not in state.keys:
            if keys_not_revoked_by(state, record.ts_us) >= catalog.max_active_keys:
                detail = f"account already has {catalog.max_active_keys} active keys; key {key_id!r} stays unknown"
                return _reject(state, record.identity, "", record.kind, API_KEY_LIMIT, detail, record.ts_us, record.raw)
            state.keys[key_id] = KeyState(record.ts_us)
    elif record.kind == "api_key.revoked":
        key = state.keys.get(f["api_key_id"])
        if key is None:
            detail = f"key {f['api_key_id']!r} is not a key of this account"
            return _reject(state, record.identity, "", record.kind, INVALID_API_KEY, detail, record.ts_us, record.raw)
        if key.revoked_us is None or record.ts_us < key.revoked_us:
            key.revoked_us = record.ts_us
    elif record.kind == "credit.recharge":
        changes = recharge(state, Decimal(f["amount"]), state.seq)
        if changes:
            outcome.status_changes = changes
    elif record.kind == "credit.voucher":
        if f["voucher_id"] not in state.vouchers:
            expires = record.fields.get("expires_at")
            state.vouchers[f["voucher_id"]] = Voucher(f["voucher_id"], Decimal(f["amount"]), parse_ts(expires) if expires else None)
    elif record.kind == "limits.set":
        state.limits = (state.limits or catalog.default_limits).updated(f.get("qps"), f.get("qpm"), f.get("tpm"))
    elif record.kind == "whitelist.add":
        state.whitelist = state.whitelist | {f["model"]}
    elif record.kind == "whitelist.remove":
        state.whitelist = (state.whitelist - {f["model"]}) or NO_MODELS
    elif record.kind == "rebill.lines":
        stale = _stale_line(state, f["lines"])
        if stale is not None:
            return _reject(state, record.identity, "", record.kind, STALE_REBILL, stale, record.ts_us, record.raw)
        _apply_rebilled_lines(state, f["lines"], catalog.settlement_grace_us)
    return outcome  # clock.tick: the clock moved, closing is done by the caller
