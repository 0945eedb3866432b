"""(c) The pure fold alone, in this process, on the records in memory: `apply` over records already
parsed, one `AccountState` per account, no Kafka and no ClickHouse (fold_rps). Parsing and
validating the same bytes is timed apart (parse_rps), and both together are parse_and_fold_rps,
which is what fold_rps measured before 2026-11-29."""

from __future__ import annotations

import time
from typing import Any

import orjson

from pipeline.core.catalog import load_catalog
from pipeline.core.fold import apply
from pipeline.core.records import Invalid, Usage, parse_record
from pipeline.core.state import AccountState
from pipeline.ingest.publish import key_and_kind
from pipeline.stream.gcpause import gc_paused


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
    with gc_paused():  # as the worker and a rebill fold (pipeline/stream/gcpause.py)
        started = time.perf_counter()
        records = [parse_record(value, key) for value, key in items]
        parsed = time.perf_counter()
        for record in records:
            state = states.get(record.account_id)
            if state is None:
                state = states[record.account_id] = AccountState(record.account_id)
            outcome = apply(state, record, catalog)
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        folded = time.perf_counter()
    parse_s, fold_s = max(parsed - started, 1e-9), max(folded - parsed, 1e-9)
    n = len(items)
    return {
        "records": n,
        "seconds": fold_s,
        "rps": n / fold_s,
        "parse_seconds": parse_s,
        "parse_rps": n / parse_s,
        "parse_and_fold_rps": n / (parse_s + fold_s),
        "accounts": len(states),
        "outcomes": statuses,
    }


def usage_hours(lines: list[bytes]) -> tuple[int, int] | None:
    """First and last event time (us) of the valid usage records: the rebill range."""
    lo = hi = None
    for value, key in keyed(lines):
        record = parse_record(value, key)
        if isinstance(record, Usage) and not isinstance(record, Invalid):
            lo = record.ts_us if lo is None else min(lo, record.ts_us)
            hi = record.ts_us if hi is None else max(hi, record.ts_us)
    return None if lo is None else (lo, hi)
