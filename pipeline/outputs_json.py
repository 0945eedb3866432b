"""Wire formats of the messages the worker publishes (status, violations, clock ticks)."""

from __future__ import annotations

from typing import Iterable

import orjson

from pipeline.outputs import StatusChange, Violation
from pipeline.timestamps import format_ts


def status(change: StatusChange) -> bytes:
    return orjson.dumps({
        "account_id": change.account_id,
        "status": change.status,
        "debt": f"{change.debt:.6f}",
        "cash_balance": f"{change.cash_balance:.6f}",
        "as_of": format_ts(change.ts_us),
        "seq": change.seq,
    })


def violations(account_id: str, items: Iterable[Violation]) -> bytes:
    return orjson.dumps({
        "account_id": account_id,
        "violations": [
            {"event_id": v.event_id, "timestamp": format_ts(v.ts_us), "limit": v.limit,
             "window_start": format_ts(v.window_start_us), "observed": v.observed, "allowed": v.allowed}
            for v in items
        ],
    })


def tick(account_id: str, clock_us: int) -> bytes:
    return orjson.dumps({"type": "clock.tick", "account_id": account_id, "timestamp": format_ts(clock_us)})
