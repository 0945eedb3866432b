"""Builders for unit tests of the billing core: records from dicts, catalogs from edited copies."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from pipeline.core import control, records
from pipeline.core.catalog import DEFAULT_CATALOG, Catalog, load_catalog, parse_catalog
from pipeline.core.facts import Outcome
from pipeline.core.fold import apply
from pipeline.core.state import AccountState, LineKey
from pipeline.core.timestamps import hour_start, parse_ts
from pipeline.core.windows import WindowKey

ACCOUNT = "acct-1"
KEY = "key-1"
DAY = "2024-06-07"  # first day base/plus/max/lite prices are in force
T0 = f"{DAY}T10:00:00+08:00"

CATALOG = load_catalog()
_CATALOG_DATA = json.loads(DEFAULT_CATALOG.read_text(encoding="utf-8"))


def D(text: str) -> Decimal:
    return Decimal(text)


def us(ts: str) -> int:
    return parse_ts(ts)


# The control key of the unit tests: control records the tests feed are signed with it, as the
# pipeline's own tools sign theirs (a forged one is tested unsigned, in test_control.py).
CONTROL_KEY = b"unit-test-control-key-0123456789abcdef"


def parse(body: Any, key_account: str = "") -> records.Record:
    """JSON-encode `body` and parse it exactly as the pipeline parses bytes from the topic (a
    control record signed, as the pipeline's tools send it)."""
    return records.parse_record(control.sign_line(json.dumps(body).encode("utf-8"), CONTROL_KEY), key_account, CONTROL_KEY)


def catalog_data() -> dict[str, Any]:
    """A deep copy of schemas/catalog.json, to edit and feed to parse_catalog."""
    return copy.deepcopy(_CATALOG_DATA)


def make_catalog(**top: Any) -> Catalog:
    """The default catalog with some top-level fields replaced (e.g. free_quota_tokens=100)."""
    data = catalog_data()
    data.update(top)
    return parse_catalog(data)


NO_QUOTA = make_catalog(free_quota_tokens=0)


def usage(
    event_id: str = "ev-1",
    ts: str = T0,
    model: str = "xingchen-base",
    input_tokens: int = 100,
    output_tokens: int = 50,
    key: str = KEY,
    account: str = ACCOUNT,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "account_id": account,
        "timestamp": ts,
        "event_id": event_id,
        "api_key_id": key,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    body.update(extra)
    return body


def key_created(key: str = KEY, ts: str = f"{DAY}T00:00:00+08:00", account: str = ACCOUNT) -> dict[str, Any]:
    return {"type": "api_key.created", "account_id": account, "timestamp": ts, "api_key_id": key}


def key_revoked(key: str = KEY, ts: str = T0, account: str = ACCOUNT) -> dict[str, Any]:
    return {"type": "api_key.revoked", "account_id": account, "timestamp": ts, "api_key_id": key}


def recharge(amount: str, ts: str = T0, account: str = ACCOUNT) -> dict[str, Any]:
    return {"type": "credit.recharge", "account_id": account, "timestamp": ts, "amount": amount}


def voucher(voucher_id: str, amount: str, ts: str = T0, account: str = ACCOUNT, **extra: Any) -> dict[str, Any]:
    body = {"type": "credit.voucher", "account_id": account, "timestamp": ts, "voucher_id": voucher_id, "amount": amount}
    body.update(extra)
    return body


def limits(ts: str = T0, account: str = ACCOUNT, **values: int) -> dict[str, Any]:
    return {"type": "limits.set", "account_id": account, "timestamp": ts, **values}


def whitelist_add(model: str = "xingchen-longcontext", ts: str = T0, account: str = ACCOUNT) -> dict[str, Any]:
    return {"type": "whitelist.add", "account_id": account, "timestamp": ts, "model": model}


def whitelist_remove(model: str = "xingchen-longcontext", ts: str = T0, account: str = ACCOUNT) -> dict[str, Any]:
    return {"type": "whitelist.remove", "account_id": account, "timestamp": ts, "model": model}


class Account:
    """One account's state fed record by record through `fold.apply`, in log order."""

    def __init__(self, catalog: Catalog = CATALOG, keys: tuple[str, ...] = (KEY,), account: str = ACCOUNT):
        self.catalog = catalog
        self.state = AccountState(account)
        for key in keys:
            outcome = self.feed(key_created(key, account=account))
            assert outcome.status == "applied", outcome

    def feed(self, body: Any) -> Outcome:
        return apply(self.state, parse(body), self.catalog)

    def feed_raw(self, raw: bytes) -> Outcome:
        return apply(self.state, records.parse_record(raw, "", CONTROL_KEY), self.catalog)

    def line(self, ts: str, item: str, key: str = KEY):
        return self.state.lines[(hour_start(us(ts)), key, item)]


def touched(state: AccountState) -> tuple[list[LineKey], list[WindowKey]]:
    """The bill lines and rate windows the record applied last changed: they carry its seq as
    their revision (how the processor finds what to write)."""
    return (
        [key for key, line in state.lines.items() if line.revision == state.seq],
        [key for key, window in state.windows.items() if window.revision == state.seq],
    )
