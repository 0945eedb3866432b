"""(c) The pure fold alone, in this process: parse + validate + apply over the records in memory,
one `AccountState` per account, no Kafka and no ClickHouse."""

from __future__ import annotations

import time
from typing import Any

import orjson

from pipeline.catalog import load_catalog
from pipeline.fold import apply
from pipeline.gcpause import gc_paused
from pipeline.publish import key_and_kind
from pipeline.records import Invalid, Usage, parse_record
from pipeline.state import AccountState


def keyed(lines: list[bytes]) -> list[tuple[bytes, str]]:
    """(value, key account) as `billing publish` keys them (outside the timed part)."""
    out = []
    for line in lines:
        try:
            key = key_and_kind(orjson.loads(line))[0]
        except orjson.JSONDecodeError:
            key = b""
        out.append((line, key.decode("utf-8", errors="replace")))
    return out


def run(lines: list[bytes]) -> dict[str, Any]:
    catalog = load_catalog()
    items = keyed(lines)
    states: dict[str, AccountState] = {}
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    with gc_paused():  # as the worker and a rebill fold (pipeline/gcpause.py)
        for value, key in items:
            record = parse_record(value, key)
            state = states.get(record.account_id)
            if state is None:
                state = states[record.account_id] = AccountState(record.account_id)
            outcome = apply(state, record, catalog)
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    seconds = max(time.perf_counter() - started, 1e-9)
    return {"records": len(items), "seconds": seconds, "rps": len(items) / seconds, "accounts": len(states),
            "outcomes": statuses}


def usage_hours(lines: list[bytes]) -> tuple[int, int] | None:
    """First and last event time (us) of the valid usage records: the rebill range."""
    lo = hi = None
    for value, key in keyed(lines):
        record = parse_record(value, key)
        if isinstance(record, Usage) and not isinstance(record, Invalid):
            lo = record.ts_us if lo is None else min(lo, record.ts_us)
            hi = record.ts_us if hi is None else max(hi, record.ts_us)
    return None if lo is None else (lo, hi)
