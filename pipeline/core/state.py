"""What the pipeline remembers about one main account between records.

The durable part (quota used, keys, limits, whitelist, credits, sequence) is small and goes into
a snapshot after every batch. The working sets (`seen`, `lines`, `windows`) hold only what the
records at hand need: the worker loads them from ClickHouse before a batch and prunes them
after, so that an account's history never has to fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from pipeline.core.windows import Limits, WindowKey, minute_start

ZERO = Decimal("0.000000")
ZERO_TEXT = str(ZERO)
LineKey = tuple[int, str, str]  # (hour start us, api_key_id, item)
LATEST_HOUR = 2**63 - 1  # beyond every hour
# The counters of a bill line, in the bill tables' column order (amount and revision follow them).
LINE_COUNTS = ("requests", "input_tokens", "output_tokens", "free_tokens", "billed_input_tokens", "billed_output_tokens", "quantity")
# Whitelists and adjusting hours are empty for nearly every account and change rarely: frozensets,
# replaced on change, so that every empty one is this one object. An empty set costs 216 bytes,
# and two per cached state were an eighth of a state's memory (docs/performance-log.md, session 12).
NO_MODELS: frozenset[str] = frozenset()
NO_HOURS: frozenset[int] = frozenset()
# Sets of hours or minutes that every cached state (and the processor, per account) keeps are
# tuples: a set is always watched by the cyclic collector, and a tuple of ints stops being watched
# after the first full collection that sees it. A full collection walks every watched object of a
# cached state and holds Python's lock meanwhile (stream/gcpause.py: a second at 100,000 accounts);
# three sets were three of a state's dozen, and 216 bytes each against 48-64 for a tuple of one or two.
Instants = tuple[int, ...]


def with_instant(instants: Instants, instant: int) -> Instants:
    """`instants` with `instant` in it (the same tuple when it already is)."""
    return instants if instant in instants else (*instants, instant)


@dataclass(slots=True)
class KeyState:
    created_us: int
    revoked_us: int | None = None

    def active_at(self, ts_us: int) -> bool:
        """Not revoked at or before ts_us (creation is checked by log order, see interpretations)."""
        return self.revoked_us is None or self.revoked_us > ts_us


# The two classes below write their __init__ by hand: compiled (setup.py), a dataclass's generated
# __init__ would stay interpreted Python, and they are made per new line and window.
@dataclass(slots=True, init=False)
class Line:
    """Cumulative values of one bill line; `revision` is the account seq that last changed it."""

    requests: int
    input_tokens: int
    output_tokens: int
    free_tokens: int
    billed_input_tokens: int
    billed_output_tokens: int
    quantity: int
    amount: Decimal
    revision: int

    def __init__(
        self,
        requests: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        free_tokens: int = 0,
        billed_input_tokens: int = 0,
        billed_output_tokens: int = 0,
        quantity: int = 0,
        amount: Decimal = ZERO,
        revision: int = 0,
    ) -> None:
        self.requests = requests
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.free_tokens = free_tokens
        self.billed_input_tokens = billed_input_tokens
        self.billed_output_tokens = billed_output_tokens
        self.quantity = quantity
        self.amount = amount
        self.revision = revision


@dataclass(slots=True, init=False)
class Window:
    requests: int
    tokens: int
    revision: int

    def __init__(self, requests: int = 0, tokens: int = 0, revision: int = 0) -> None:
        self.requests = requests
        self.tokens = tokens
        self.revision = revision


@dataclass(slots=True)
class Voucher:
    voucher_id: str
    remaining: Decimal
    expires_us: int | None = None


@dataclass(slots=True)
class AccountState:
    account_id: str
    seq: int = 0
    free_used: int = 0
    keys: dict[str, KeyState] = field(default_factory=dict)
    limits: Limits | None = None  # None: the catalog's defaults
    whitelist: frozenset[str] = NO_MODELS
    cash_balance: Decimal = ZERO
    debt: Decimal = ZERO
    vouchers: dict[str, Voucher] = field(default_factory=dict)
    duplicates: int = 0
    max_ts_us: int = 0  # the account's event-time clock
    open_hours: dict[int, Decimal] = field(default_factory=dict)  # hour -> amount not yet settled
    last_settled_hour: int | None = None  # the latest hour with a regular settlement
    adjusting: frozenset[int] = NO_HOURS  # open hours that were settled before: adjustments
    # where in the input log this account last applied a record (edge bookkeeping)
    log_epoch: str = ""
    log_partition: int = -1
    log_offset: int = -1
    # working sets
    seen: dict[str, str] = field(default_factory=dict)
    lines: dict[LineKey, Line] = field(default_factory=dict)
    line_hours: Instants = ()  # the hours in `lines`; kept by the methods below
    windows: dict[WindowKey, Window] = field(default_factory=dict)

    def line(self, key: LineKey) -> Line:
        """The bill line at key, created empty when new."""
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = Line()
            self.line_hours = with_instant(self.line_hours, key[0])
        return line

    def add_lines(self, lines: dict[LineKey, Line]) -> None:
        """Lines loaded from ClickHouse into the working set."""
        self.lines.update(lines)
        for key in lines:
            self.line_hours = with_instant(self.line_hours, key[0])

    def drop_lines_before(self, hour_floor: int) -> None:
        self.keep_lines_between(hour_floor, LATEST_HOUR)

    def keep_lines_between(self, start_us: int, end_us: int) -> None:
        """Only the lines of hours in [start_us, end_us) stay in the working set."""
        self.lines = {key: line for key, line in self.lines.items() if start_us <= key[0] < end_us}
        self.line_hours = tuple(hour for hour in self.line_hours if start_us <= hour < end_us)

    def window_floor(self, keep_us: int) -> int:
        """Start of the oldest rate window worth keeping: the minute `keep_us` behind the clock."""
        return minute_start(self.max_ts_us) - keep_us

    def drop_windows_before(self, floor_us: int) -> None:
        self.windows = {key: window for key, window in self.windows.items() if key[1] >= floor_us}

    def to_json(self) -> bytes:
        """The durable part only; working sets live in their own ClickHouse tables."""
        return orjson.dumps(
            {
                "account_id": self.account_id,
                "seq": self.seq,
                "free_used": self.free_used,
                "keys": {k: [v.created_us, v.revoked_us] for k, v in self.keys.items()},
                "limits": None if self.limits is None else [self.limits.qps, self.limits.qpm, self.limits.tpm],
                "whitelist": sorted(self.whitelist),
                "cash_balance": str(self.cash_balance),
                "debt": str(self.debt),
                "vouchers": [[v.voucher_id, str(v.remaining), v.expires_us] for v in self.vouchers.values()],
                "duplicates": self.duplicates,
                "max_ts_us": self.max_ts_us,
                "open_hours": [[h, str(a)] for h, a in sorted(self.open_hours.items())],
                "last_settled_hour": self.last_settled_hour,
                "adjusting": sorted(self.adjusting),
                "log": [self.log_epoch, self.log_partition, self.log_offset],
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> "AccountState":
        d: dict[str, Any] = orjson.loads(data)
        epoch, partition, offset = d["log"]
        return cls(
            account_id=d["account_id"],
            seq=d["seq"],
            free_used=d["free_used"],
            keys={k: KeyState(c, r) for k, (c, r) in d["keys"].items()},
            limits=None if d["limits"] is None else Limits(*d["limits"]),
            whitelist=frozenset(d["whitelist"]) or NO_MODELS,
            cash_balance=_money(d["cash_balance"]),
            debt=_money(d["debt"]),
            vouchers={v[0]: Voucher(v[0], Decimal(v[1]), v[2]) for v in d["vouchers"]},
            duplicates=d["duplicates"],
            max_ts_us=d["max_ts_us"],
            open_hours={h: _money(a) for h, a in d.get("open_hours", [])},
            last_settled_hour=d.get("last_settled_hour"),
            adjusting=frozenset(d.get("adjusting", ())) or NO_HOURS,
            log_epoch=epoch,
            log_partition=partition,
            log_offset=offset,
        )


def _money(text: str) -> Decimal:
    """A snapshot's amount; zero (most debts) as the shared ZERO, one object for every state
    instead of 104 bytes each. Exact: ZERO is Decimal("0.000000"), which str() writes back as is."""
    return ZERO if text == ZERO_TEXT else Decimal(text)
