"""A deterministic, realistic synthetic workload of input records (`billing up --demo`, tests, bench).

    generate(n_records, seed=1, accounts=8, start="2024-06-06T20:00:00+08:00", bad_fraction=0.02)
        -> list[str]          # JSON lines, one record each, in publish order
    write_jsonl(path, lines)  # writes them to a file ("-" = stdout)

The same arguments always give the same lines. Every line is a JSON object with a string
`account_id`; timestamps are RFC 3339, +08:00, millisecond precision.

What is in it (rates are per record unless said otherwise):
- a prelude per account: one or two `api_key.created`, a `credit.recharge`, sometimes a
  `credit.voucher` (some with `expires_at`), `whitelist.add` of the whitelist-only model for every
  third account, `limits.set` for every other account;
- scripted key life cycles: more keys, a 4th creation that is refused (`api_key_limit`) on every
  fourth account followed by a revocation of that never-created key, revocations of active keys
  (later calls on them are `invalid_api_key`, late calls timed before the revocation are not),
  a `whitelist.remove` on some whitelisted accounts;
- usage over every catalog model (plus an occasional unknown model), calls with plugins
  (text_to_image counts, free plugins, sometimes a zero count, rarely an unknown plugin),
  console calls, input breakdowns, calls over the input limit and over the context, calls on
  unknown keys, and late calls (3%, 3 to 60 minutes late);
- time runs in two segments: `start` + 12 h (by default 2024-06-06 20:00 to 2024-06-07 08:00, so
  that base/plus/max/lite calls before 2024-06-07 have no price in force), then a jump to 2 h
  before the latest price date in the catalog, + 6 h (2024-09-17 22:00 to 2024-09-18 04:00, so
  plus-v2 is first unpriced and then priced); traffic before each price date is thinner;
- "heavy" accounts (every fourth) that send big lite / plus-v2 calls and run through the free
  quota in the middle of a call;
- exact re-deliveries of recent lines (2%: the same text, usage and account records alike) and
  conflicting re-deliveries (0.4%: same `event_id`, changed tokens);
- `bad_fraction` of records that parse as JSON but break the schema (missing or mistyped
  fields, negative tokens, naive or impossible timestamps, unknown `type`, extra fields, bad
  amounts); some bad usage records are later re-sent corrected under the same `event_id`.
"""

from __future__ import annotations

import heapq
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.catalog import DEFAULT_CATALOG, ModelSpec, load_catalog

TZ8 = timezone(timedelta(hours=8))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS_MIN = 60_000
MS_HOUR = 60 * MS_MIN

UNKNOWN_MODELS = ("xingchen-ultra", "xingchen-plus-v3", "qwen-max")
UNKNOWN_PLUGINS = ("image_to_video", "text_to_speech", "code_interpreter")
UNKNOWN_TYPES = ("usage.v2", "api_key.rotated", "credit.refund", "invoice")
BREAKDOWN = ("role_setting", "history", "long_term_memory", "web_search")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@lru_cache(maxsize=4)
def _catalog(path: str) -> tuple[dict[str, ModelSpec], tuple[str, ...], list[int]]:
    """The catalog's models, plugin names and price-change days (ms), read by pipeline.core.catalog
    (the one parser: the workload aims at the limits and dates the worker enforces)."""
    catalog = load_catalog(path)
    days = {p.from_us // 1000 for model in catalog.models.values() for p in model.prices if p.from_us is not None}
    return dict(catalog.models), tuple(catalog.plugins), sorted(days)


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"start {text!r} needs a UTC offset")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


_day_cache: dict[int, str] = {}


def _ts(ms: int) -> str:
    """Milliseconds since the epoch -> RFC 3339 in +08:00 with millisecond precision."""
    sec, milli = divmod(ms + 8 * MS_HOUR, 1000)
    day, rest = divmod(sec, 86_400)
    date = _day_cache.get(day)
    if date is None:
        date = _day_cache[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}+08:00"


@dataclass
class _Account:
    idx: int
    account_id: str
    heavy: bool
    whitelisted: bool
    active: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    fresh: str | None = None  # a key just created: the next call uses it
    last_ms: int = 0


class _Generator:
    def __init__(self, n_records: int, seed: int, accounts: int, start: str, bad_fraction: float, catalog: str):
        self.n = n_records
        self.rng = random.Random(f"xingchen-workload:{seed}")
        self.seed = seed
        self.models, self.plugins, boundaries = _catalog(catalog)
        self.model_names = tuple(self.models)
        self.wl_models = tuple(m for m, spec in self.models.items() if spec.whitelist_only) or ("xingchen-longcontext",)
        self.free_plugins = tuple(p for p in self.plugins if p != "text_to_image")
        self.bad_fraction = max(0.0, min(1.0, bad_fraction))
        self.out: list[str] = []
        self.counter = 0
        self.recent_usage: list[tuple[str, dict[str, Any]]] = []  # (line, record) of schema-valid usage
        self.recent_account: list[str] = []
        self.recent_bad: list[str] = []
        self.pending_fixes: list[tuple[int, int, dict[str, Any]]] = []  # heap of (emit at len(out), seq, record)
        self._segments(_ms(start), boundaries)
        rng = self.rng
        n_acc = max(1, accounts)
        self.accounts = [
            _Account(
                idx=i,
                account_id=str(rng.randrange(10**15, 10**16)),
                heavy=(i % 4 == 0),
                whitelisted=(i % 3 == 0),
            )
            for i in range(n_acc)
        ]
        self._weights = {}

    # -- time ---------------------------------------------------------------------------------
    def _segments(self, start_ms: int, boundaries: list[int]) -> None:
        """Piecewise-linear clock over progress p in [0, 1]: thin traffic before price dates."""
        s1 = start_ms
        later = [b for b in boundaries if b - 2 * MS_HOUR > s1 + 13 * MS_HOUR]
        s2 = (later[-1] - 2 * MS_HOUR) if later else s1 + 13 * MS_HOUR
        self.seg = [
            (0.00, 0.08, s1, s1 + 4 * MS_HOUR),
            (0.08, 0.70, s1 + 4 * MS_HOUR, s1 + 12 * MS_HOUR),
            (0.70, 0.75, s2, s2 + 2 * MS_HOUR),
            (0.75, 1.00, s2 + 2 * MS_HOUR, s2 + 6 * MS_HOUR),
        ]
        self.start_ms = s1
        self.second_segment_ms = s2

    def clock(self, p: float) -> int:
        for p0, p1, t0, t1 in self.seg:
            if p < p1:
                return t0 + int((t1 - t0) * (max(p, p0) - p0) / (p1 - p0))
        return self.seg[-1][3]

    def stamp(self, acct: _Account, now: int) -> int:
        ms = max(now + int(self.rng.random() * 1500), acct.last_ms + 1)
        acct.last_ms = ms
        return ms

    # -- ids ------------------------------------------------------------------------------------
    def event_id(self) -> str:
        self.counter += 1
        return f"evt-{self.rng.getrandbits(48):012x}-{self.seed}-{self.counter:07d}"

    def key_id(self) -> str:
        return f"sk-{self.rng.getrandbits(96):024x}"

    # -- emit -----------------------------------------------------------------------------------
    def emit_account(self, record: dict[str, Any]) -> None:
        line = _dumps(record)
        self.out.append(line)
        self.recent_account.append(line)
        if len(self.recent_account) > 4000:
            del self.recent_account[:2000]

    def emit_usage(self, record: dict[str, Any]) -> None:
        line = _dumps(record)
        self.out.append(line)
        self.recent_usage.append((line, record))
        if len(self.recent_usage) > 8000:
            del self.recent_usage[:4000]

    def account_record(self, acct: _Account, kind: str, ms: int, **fields: Any) -> dict[str, Any]:
        record = {"type": kind, "account_id": acct.account_id, "timestamp": _ts(ms)}
        record.update(fields)
        return record

    # -- account records ----------------------------------------------------------------------
    def create_key(self, acct: _Account, ms: int) -> None:
        key = self.key_id()
        self.emit_account(self.account_record(acct, "api_key.created", ms, api_key_id=key))
        if len(acct.active) >= 3:
            acct.refused.append(key)  # refused: api_key_limit, the key stays unknown
        else:
            acct.active.append(key)
            acct.fresh = key

    def revoke_key(self, acct: _Account, ms: int, key: str | None = None) -> None:
        if key is None:
            if len(acct.active) < 2:
                self.create_key(acct, ms)
                ms += 1
            key = acct.active.pop(0)
            acct.revoked.append(key)
            if acct.fresh == key:
                acct.fresh = None
        self.emit_account(self.account_record(acct, "api_key.revoked", ms, api_key_id=key))

    def recharge(self, acct: _Account, ms: int) -> None:
        amount = self.rng.choice(("50", "100", "200.00", "500", "1000.00", "88.88", "0.50", "2500"))
        self.emit_account(self.account_record(acct, "credit.recharge", ms, amount=amount))

    def voucher(self, acct: _Account, ms: int) -> None:
        rng = self.rng
        fields: dict[str, Any] = {
            "voucher_id": f"vch-{rng.getrandbits(40):010x}",
            "amount": rng.choice(("10", "20.00", "50", "5.5", "100.000000")),
        }
        if rng.random() < 0.7:
            fields["expires_at"] = _ts(ms + rng.choice((1, 3, 7, 30, 90)) * 24 * MS_HOUR)
        self.emit_account(self.account_record(acct, "credit.voucher", ms, **fields))

    def limits(self, acct: _Account, ms: int) -> None:
        rng = self.rng
        options = {
            "qps": rng.choice((2, 5, 10, 20)),
            "qpm": rng.choice((120, 300, 600, 1200)),
            "tpm": rng.choice((10_000, 100_000, 300_000, 1_000_000)),
        }
        chosen = {k: v for k, v in options.items() if rng.random() < 0.7} or {"tpm": options["tpm"]}
        self.emit_account(self.account_record(acct, "limits.set", ms, **chosen))

    def whitelist(self, acct: _Account, ms: int, add: bool) -> None:
        kind = "whitelist.add" if add else "whitelist.remove"
        self.emit_account(self.account_record(acct, kind, ms, model=self.rng.choice(self.wl_models)))
        acct.whitelisted = add

    # -- usage ----------------------------------------------------------------------------------
    def pick_model(self, acct: _Account, now: int) -> str:
        rng = self.rng
        if rng.random() < 0.003:
            return rng.choice(UNKNOWN_MODELS)
        second = now >= self.second_segment_ms
        key = (acct.heavy, second, acct.whitelisted)
        table = self._weights.get(key)
        if table is None:
            weights = []
            for name, spec in self.models.items():
                if spec.whitelist_only:
                    w = (0.07 if acct.heavy else 0.08) if acct.whitelisted else 0.01
                elif name.endswith("-v2"):
                    w = (0.35 if acct.heavy else 0.18) if second else 0.01
                elif name.endswith("-lite"):
                    w = 0.45 if acct.heavy else 0.2
                elif name.endswith("-max"):
                    w = 0.03 if acct.heavy else 0.1
                else:
                    w = 0.05 if acct.heavy else 0.24
                weights.append(w)
            total = sum(weights)
            cum, acc = [], 0.0
            for w in weights:
                acc += w / total
                cum.append(acc)
            table = self._weights[key] = cum
        r = rng.random()
        for name, edge in zip(self.model_names, table):
            if r < edge:
                return name
        return self.model_names[-1]

    def ri(self, low: int, high: int) -> int:
        """A uniform integer in [low, high] (randint is several times slower)."""
        return low + int(self.rng.random() * (high - low + 1))

    def pick(self, seq: Any) -> Any:
        return seq[int(self.rng.random() * len(seq))]

    def tokens(self, acct: _Account, model: str) -> tuple[int, int]:
        rng, ri = self.rng, self.ri
        spec = self.models.get(model)
        limit = spec.max_input if spec else 6500
        context = spec.context if spec else 8000
        r = rng.random()
        if r < 0.004:  # over the input limit
            return limit + ri(1, 3000), ri(10, 500)
        if r < 0.008 and context:  # within the input limit, over the context
            tin = ri(max(1, min(limit, context) - 1500), min(limit, context))
            return tin, context - tin + ri(1, 1500)
        room = context if context else 40_000
        top = min(limit, room - 1000)
        if acct.heavy and (context is None or context >= 32000):
            tin = ri(top // 3, top)
        else:
            tin = min(top, max(1, int(rng.lognormvariate(6.7, 0.9))))
        out_cap = max(1, min(12_000 if acct.heavy else 1500, room - tin))
        return tin, ri(1, out_cap)

    def usage(self, acct: _Account, now: int) -> dict[str, Any]:
        rng, ri, pick = self.rng, self.ri, self.pick
        if rng.random() < 0.03:  # a late call
            ms = now - ri(3 * MS_MIN, 60 * MS_MIN) - ri(0, 999)
        else:
            ms = self.stamp(acct, now)
        model = self.pick_model(acct, ms)
        tin, tout = self.tokens(acct, model)
        r = rng.random()
        if acct.fresh is not None:
            key = acct.fresh
            acct.fresh = None
        elif r < 0.015 and acct.revoked:
            key = pick(acct.revoked)
        elif r < 0.025:
            key = pick(acct.refused) if acct.refused and rng.random() < 0.5 else f"sk-{rng.getrandbits(96):024x}"
        else:
            key = pick(acct.active)
        record: dict[str, Any] = {}
        if rng.random() < 0.1:
            record["type"] = "usage"
        record.update(
            account_id=acct.account_id,
            timestamp=_ts(ms),
            event_id=self.event_id(),
            api_key_id=key,
            model=model,
            input_tokens=tin,
            output_tokens=tout,
        )
        r = rng.random()
        if r < 0.06:
            record["channel"] = "console"
        elif r < 0.11:
            record["channel"] = "api"
        r = rng.random()
        if r < 0.15:
            plugins: dict[str, int] = {}
            if rng.random() < 0.55:
                plugins["text_to_image"] = pick((1, 1, 1, 2, 2, 3, 4))
            for name in rng.sample(self.free_plugins, pick((0, 1, 1, 2))):
                plugins[name] = ri(1, 3)
            if not plugins:
                plugins[pick(self.free_plugins)] = 1
            if rng.random() < 0.05:
                plugins[pick(self.free_plugins)] = 0  # metered nothing: no line
            record["plugins"] = plugins
        elif r < 0.153:
            record["plugins"] = {pick(UNKNOWN_PLUGINS): ri(1, 2)}
        if rng.random() < 0.15:
            cuts = sorted((ri(0, tin), ri(0, tin), ri(0, tin)))
            parts = (cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], tin - cuts[2])
            record["input_breakdown"] = {name: n for name, n in zip(BREAKDOWN, parts) if n or rng.random() < 0.5}
        return record

    # -- duplicates and bad records -------------------------------------------------------------
    def redeliver(self) -> bool:
        rng = self.rng
        pool: list[Any]
        if self.recent_account and rng.random() < 0.1:
            pool = self.recent_account
            self.out.append(pool[rng.randrange(max(0, len(pool) - 200), len(pool))])
            return True
        if not self.recent_usage:
            return False
        pool = self.recent_usage
        back = 2000 if rng.random() < 0.1 else 300  # mostly a prompt retry, sometimes a replay from further back
        self.out.append(pool[rng.randrange(max(0, len(pool) - back), len(pool))][0])
        return True

    def conflicting(self) -> bool:
        rng = self.rng
        if not self.recent_usage:
            return False
        pool = self.recent_usage
        _, original = pool[rng.randrange(max(0, len(pool) - 2000), len(pool))]
        changed = dict(original)
        field_name = "input_tokens" if rng.random() < 0.6 else "output_tokens"
        changed[field_name] = max(0, changed[field_name] + rng.choice((-1, 1)) * rng.randint(1, 200))
        if changed[field_name] == original[field_name]:
            changed[field_name] += 1
        self.out.append(_dumps(changed))
        return True

    def bad(self, acct: _Account, now: int) -> None:
        rng = self.rng
        if self.recent_bad and rng.random() < 0.05:  # the same broken line again: rejected again
            self.out.append(rng.choice(self.recent_bad))
            return
        kind = rng.randrange(10)
        ms = self.stamp(acct, now)
        if kind < 7:
            record = self.usage(acct, now)
            record.pop("input_breakdown", None)
            good = dict(record)
            if kind == 0:  # a required field missing
                del record[rng.choice(("timestamp", "event_id", "api_key_id", "model", "input_tokens", "output_tokens"))]
            elif kind == 1:  # wrong types
                choice = rng.randrange(5)
                if choice == 0:
                    record["input_tokens"] = str(record["input_tokens"])
                elif choice == 1:
                    record["output_tokens"] = record["output_tokens"] + 0.5
                elif choice == 2:
                    record["model"] = 42
                elif choice == 3:
                    record["plugins"] = {"text_to_image": "2"}
                else:
                    record["channel"] = "web"
            elif kind == 2:  # negative tokens
                record[rng.choice(("input_tokens", "output_tokens"))] = -rng.randint(1, 500)
            elif kind == 3:  # naive timestamp
                record["timestamp"] = record["timestamp"][:-6]
            elif kind == 4:  # unknown type
                record["type"] = rng.choice(UNKNOWN_TYPES)
            elif kind == 5:  # looks like RFC 3339, is no real instant
                ts = record["timestamp"]
                record["timestamp"] = rng.choice((ts[:5] + "06-31" + ts[10:], ts[:11] + "24" + ts[13:], ts[:5] + "13" + ts[7:]))
            else:  # a field the schema does not know
                record["region"] = "cn-hangzhou"
            line = _dumps(record)
            self.out.append(line)
            self.recent_bad.append(line)
            if rng.random() < 0.25 and kind != 4:  # corrected and re-sent later under the same event_id
                heapq.heappush(self.pending_fixes, (len(self.out) + rng.randint(5, 300), self.counter, good))
            return
        if kind == 7:
            record = self.account_record(acct, "credit.recharge", ms, amount=rng.choice((100, "-20.00", "12.3456789", "abc")))
        elif kind == 8:
            record = self.account_record(acct, rng.choice(("api_key.created", "api_key.revoked", "credit.voucher")), ms)
        else:
            record = self.account_record(acct, "limits.set", ms, qps=rng.choice((-1, "5", 1.5)))
        line = _dumps(record)
        self.out.append(line)
        self.recent_bad.append(line)

    # -- the run --------------------------------------------------------------------------------
    def prelude(self) -> None:
        rng = self.rng
        for acct in self.accounts:
            ms = self.stamp(acct, self.start_ms + acct.idx * 7_000)
            self.create_key(acct, ms)
            if acct.idx % 2 == 0:
                self.create_key(acct, self.stamp(acct, ms))
            acct.fresh = None
            self.recharge(acct, self.stamp(acct, ms))
            if rng.random() < 0.6 or acct.idx == 1:
                self.voucher(acct, self.stamp(acct, ms))
            if acct.whitelisted:
                self.whitelist(acct, self.stamp(acct, ms), add=True)
            if acct.idx % 2 == 1:
                self.limits(acct, self.stamp(acct, ms))

    def script(self) -> list[tuple[float, int, str]]:
        plan = []
        for acct in self.accounts:
            i = acct.idx
            jitter = (i % 8) * 0.004
            plan.append((0.15 + jitter, i, "create"))
            if i % 4 == 1:
                plan.append((0.30 + jitter, i, "fill_and_refuse"))
                plan.append((0.33 + jitter, i, "revoke_refused"))
            plan.append((0.40 + jitter, i, "revoke"))
            plan.append((0.43 + jitter, i, "create"))
            if acct.whitelisted and i % 2 == 1:
                plan.append((0.85 + jitter, i, "whitelist_remove"))
            plan.append((0.72 + jitter, i, "recharge"))
        plan.sort()
        return plan

    def scripted(self, acct: _Account, action: str, now: int) -> None:
        ms = self.stamp(acct, now)
        if action == "create":
            if len(acct.active) < 3:
                self.create_key(acct, ms)
        elif action == "fill_and_refuse":
            while len(acct.active) < 3:
                self.create_key(acct, ms)
                ms = self.stamp(acct, now)
            self.create_key(acct, ms)  # the 4th: refused
        elif action == "revoke_refused":
            if acct.refused:
                self.revoke_key(acct, ms, key=acct.refused[-1])  # never created: a no-op
        elif action == "revoke":
            self.revoke_key(acct, ms)
        elif action == "whitelist_remove":
            self.whitelist(acct, ms, add=False)
        elif action == "recharge":
            self.recharge(acct, ms)

    def run(self) -> list[str]:
        rng = self.rng
        n = self.n
        if n <= 0:
            return []
        self.prelude()
        base = len(self.out)
        span = max(1, n - base)
        plan = self.script()
        step = 0
        bad = self.bad_fraction
        thresholds = [bad + x for x in (0.02, 0.024, 0.027, 0.029, 0.030, 0.032)]
        while len(self.out) < n:
            p = (len(self.out) - base) / span
            now = self.clock(p)
            if step < len(plan) and plan[step][0] <= p:
                _, idx, action = plan[step]
                step += 1
                self.scripted(self.accounts[idx], action, now)
                continue
            if self.pending_fixes and self.pending_fixes[0][0] <= len(self.out):
                self.emit_usage(heapq.heappop(self.pending_fixes)[2])
                continue
            acct = self.accounts[int(rng.random() * len(self.accounts))]
            r = rng.random()
            if r < bad:
                self.bad(acct, now)
            elif r < thresholds[0]:
                if not self.redeliver():
                    self.emit_usage(self.usage(acct, now))
            elif r < thresholds[1]:
                if not self.conflicting():
                    self.emit_usage(self.usage(acct, now))
            elif r < thresholds[2]:
                self.recharge(acct, self.stamp(acct, now))
            elif r < thresholds[3]:
                self.voucher(acct, self.stamp(acct, now))
            elif r < thresholds[4]:
                self.limits(acct, self.stamp(acct, now))
            elif r < thresholds[5]:
                ms = self.stamp(acct, now)
                if len(acct.active) < 3:
                    self.create_key(acct, ms)
                elif rng.random() < 0.3:
                    self.create_key(acct, ms)  # refused
                else:
                    self.revoke_key(acct, ms)
            else:
                self.emit_usage(self.usage(acct, now))
        return self.out[:n]


def generate(
    n_records: int,
    seed: int = 1,
    accounts: int = 8,
    start: str = "2024-06-06T20:00:00+08:00",
    bad_fraction: float = 0.02,
    catalog_path: str | Path | None = None,
) -> list[str]:
    """`n_records` JSON lines in publish order; the same arguments always give the same lines."""
    return _Generator(n_records, seed, accounts, start, bad_fraction, str(catalog_path or DEFAULT_CATALOG)).run()


def write_jsonl(path: str | Path, lines: Iterable[str]) -> int:
    """Write the lines, one per line, to `path` ("-" for stdout); returns how many were written."""
    count = 0
    if str(path) == "-":
        for line in lines:
            sys.stdout.write(line + "\n")
            count += 1
        sys.stdout.flush()
        return count
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")
            count += 1
    return count


if __name__ == "__main__":  # python -m pipeline.demo.workload N [SEED] > records.jsonl
    args = sys.argv[1:]
    write_jsonl("-", generate(int(args[0]) if args else 1000, int(args[1]) if len(args) > 1 else 1))


# ---------------------------------------------------------------------------------------------
# settlement workload (BILLING_RULES §9)

SETTLEMENT_START = "2024-09-18T09:00:00+08:00"  # every catalog model is priced from 2024-09-18
SETTLEMENT_HOURS = 8
# account roles, by index modulo 6
_ROLES = ("rich", "recover", "long_arrears", "vouchers", "free_console", "late")


@dataclass
class _SAccount:
    idx: int
    account_id: str
    role: str
    keys: list[str] = field(default_factory=list)
    last_ms: int = 0
    weight: float = 1.0


class _SettlementGenerator:
    """See `generate_settlement`."""

    def __init__(self, n_records: int, seed: int, accounts: int):
        self.n = n_records
        self.seed = seed
        self.rng = random.Random(f"xingchen-settlement:{seed}")
        rng = self.rng
        self.start_ms = _ms(SETTLEMENT_START)
        self.span_ms = SETTLEMENT_HOURS * MS_HOUR
        self.accounts = [
            _SAccount(idx=i, account_id=str(rng.randrange(10**15, 10**16)), role=_ROLES[i % len(_ROLES)]) for i in range(max(1, accounts))
        ]
        for acct in self.accounts:
            if acct.role == "free_console":
                acct.weight = 0.6
        self.out: list[str] = []
        self.recent: list[tuple[str, dict[str, Any]]] = []  # (line, record) of valid records
        self.counter = 0

    # -- helpers ----------------------------------------------------------------------------------
    def ri(self, low: int, high: int) -> int:
        return low + int(self.rng.random() * (high - low + 1))

    def event_id(self) -> str:
        self.counter += 1
        return f"evt-s{self.seed}-{self.rng.getrandbits(40):010x}-{self.counter:06d}"

    def stamp(self, acct: _SAccount, now: int) -> int:
        ms = max(now + int(self.rng.random() * 1500), acct.last_ms + 1)
        acct.last_ms = ms
        return ms

    def emit(self, record: dict[str, Any], keep: bool = True) -> None:
        line = _dumps(record)
        self.out.append(line)
        if keep:
            self.recent.append((line, record))
            if len(self.recent) > 600:
                del self.recent[:300]

    def account_record(self, acct: _SAccount, kind: str, ms: int, **fields: Any) -> dict[str, Any]:
        record = {"type": kind, "account_id": acct.account_id, "timestamp": _ts(ms)}
        record.update(fields)
        return record

    def voucher_id(self, acct: _SAccount, tag: str) -> str:
        return f"vch-{acct.idx}-{tag}"

    # -- records ------------------------------------------------------------------------------------
    def prelude(self) -> None:
        start = self.start_ms
        for acct in self.accounts:
            ms = self.stamp(acct, start + acct.idx * 5_000)
            for _ in range(2 if acct.idx % 2 == 0 else 1):
                key = f"sk-{self.rng.getrandbits(96):024x}"
                acct.keys.append(key)
                self.emit(self.account_record(acct, "api_key.created", ms, api_key_id=key))
                ms = self.stamp(acct, ms)
            cash = {"rich": "2000", "recover": "2", "long_arrears": "1", "vouchers": "15", "free_console": "10", "late": "200.00"}[
                acct.role
            ]
            self.emit(self.account_record(acct, "credit.recharge", ms, amount=cash))
            vouchers: list[tuple[str, str, int | None]] = []  # (tag, amount, expires_ms)
            if acct.role == "rich":
                vouchers = [("welcome", "50", None)]
                self.emit(self.account_record(acct, "whitelist.add", self.stamp(acct, ms), model="xingchen-longcontext"))
            elif acct.role == "recover":
                vouchers = [("trial", "5", start + 150 * MS_MIN)]  # expires mid-run, 11:30
            elif acct.role == "vouchers":
                vouchers = [
                    ("e2", "5", start + 6 * MS_HOUR),  # same expiry as e1: drawn after it (voucher_id)
                    ("a", "3", start + 90 * MS_MIN),  # usable for the first hour only
                    ("b", "4", start + 4 * MS_HOUR),  # expires exactly at an hour's end: not for that hour
                    ("n", "6", None),  # no expiry: last
                    ("e1", "5", start + 6 * MS_HOUR),
                ]
            for tag, amount, expires in vouchers:
                fields: dict[str, Any] = {"voucher_id": self.voucher_id(acct, tag), "amount": amount}
                if expires is not None:
                    fields["expires_at"] = _ts(expires)
                self.emit(self.account_record(acct, "credit.voucher", self.stamp(acct, ms), **fields))

    def plan(self) -> list[tuple[float, int, str]]:
        plan = []
        for acct in self.accounts:
            i, role = acct.idx, acct.role
            jitter = (i % 6) * 0.003
            if role == "rich":
                plan.append((0.50 + jitter, i, "voucher_day"))
            elif role == "recover":
                plan.append((0.55 + jitter, i, "recharge:300"))
            elif role == "long_arrears":
                plan.append((0.45 + jitter, i, "recharge:1.00"))  # pays part of the debt: still in arrears
                plan.append((0.93 + jitter, i, "recharge:1500"))
            elif role == "vouchers":
                plan.append((0.30 + jitter, i, "voucher_late"))
                plan.append((0.31 + jitter, i, "voucher_regrant"))  # a known voucher_id: no-op
                plan.append((0.60 + jitter, i, "recharge:20"))
            elif role == "free_console":
                plan.append((0.56 + jitter, i, "tick"))  # idle from 0.40 to 0.62: a tick closes its hours
            elif role == "late":
                plan.append((0.30 + jitter, i, "recharge:50"))
                plan.append((0.60 + jitter, i, "recharge:50"))
        plan.sort()
        return plan

    def scripted(self, acct: _SAccount, action: str, now: int) -> None:
        ms = self.stamp(acct, now)
        if action.startswith("recharge:"):
            self.emit(self.account_record(acct, "credit.recharge", ms, amount=action.split(":", 1)[1]))
        elif action == "voucher_day":
            self.emit(
                self.account_record(
                    acct, "credit.voucher", ms, voucher_id=self.voucher_id(acct, "day"), amount="30", expires_at=_ts(ms + 24 * MS_HOUR)
                )
            )
        elif action == "voucher_late":
            self.emit(self.account_record(acct, "credit.voucher", ms, voucher_id=self.voucher_id(acct, "m"), amount="8"))
        elif action == "voucher_regrant":
            self.emit(self.account_record(acct, "credit.voucher", ms, voucher_id=self.voucher_id(acct, "b"), amount="400"))
        elif action == "tick":
            self.emit(self.account_record(acct, "clock.tick", ms))

    def idle(self, acct: _SAccount, p: float) -> bool:
        return acct.role == "free_console" and 0.40 <= p < 0.62

    def pick_account(self, p: float) -> _SAccount:
        live = [a for a in self.accounts if not self.idle(a, p)] or self.accounts
        total = sum(a.weight for a in live)
        r = self.rng.random() * total
        for acct in live:
            r -= acct.weight
            if r < 0:
                return acct
        return live[-1]

    def usage(self, acct: _SAccount, now: int) -> dict[str, Any]:
        rng, ri = self.rng, self.ri
        late_rate = 0.03 if acct.role == "late" else 0.008
        ms = now - ri(20 * MS_MIN, 90 * MS_MIN) - ri(0, 999) if rng.random() < late_rate else 0
        if ms < self.start_ms + 10 * MS_MIN:
            ms = self.stamp(acct, now)
        record: dict[str, Any] = {
            "account_id": acct.account_id,
            "timestamp": _ts(ms),
            "event_id": self.event_id(),
            "api_key_id": acct.keys[int(rng.random() * len(acct.keys))],
        }
        plugins: dict[str, int] = {}
        if acct.role == "free_console":  # light calls, mostly console: never past the free quota
            record["model"] = rng.choice(("xingchen-lite", "xingchen-base", "xingchen-plus"))
            record["input_tokens"], record["output_tokens"] = ri(50, 2000), ri(10, 500)
            if rng.random() < 0.7:
                record["channel"] = "console"
            if rng.random() < 0.1:
                plugins[rng.choice(("web_search", "function_call", "knowledge_base"))] = ri(1, 3)
        else:
            r = rng.random()
            if r < 0.003:
                model = rng.choice(UNKNOWN_MODELS)
                tin, tout = ri(100, 5000), ri(10, 1000)
            elif r < 0.35:
                model, tin = "xingchen-lite", ri(8000, 32000)
                tout = ri(200, 8000)
            elif r < 0.65:
                model, tin = "xingchen-plus-v2", ri(8000, 30000)
                tout = ri(200, min(6000, 32000 - tin))
            elif r < 0.75:
                model, tin = "xingchen-max", ri(2000, 6500)
                tout = ri(100, 8000 - tin)
            elif r < 0.95 or acct.role != "rich":
                model, tin = rng.choice(("xingchen-base", "xingchen-plus")), ri(2000, 6500)
                tout = ri(100, 8000 - tin)
            else:
                model, tin = "xingchen-longcontext", ri(5000, 28000)
                tout = ri(100, 32000 - tin)
            record["model"], record["input_tokens"], record["output_tokens"] = model, tin, tout
            r = rng.random()
            if r < 0.05:
                record["channel"] = "console"
            elif r < 0.08:
                record["channel"] = "api"
            if rng.random() < 0.1:
                if rng.random() < 0.5:
                    plugins["text_to_image"] = ri(1, 2)
                plugins[rng.choice(("web_search", "function_call", "long_term_memory"))] = ri(1, 2)
        if plugins:
            record["plugins"] = plugins
        return record

    def redeliver(self) -> bool:
        if not self.recent:
            return False
        line, _ = self.recent[self.rng.randrange(max(0, len(self.recent) - 300), len(self.recent))]
        self.out.append(line)
        return True

    def conflicting(self) -> bool:
        usages = [rec for _, rec in self.recent[-300:] if "event_id" in rec]
        if not usages:
            return False
        changed = dict(self.rng.choice(usages))
        changed["output_tokens"] = max(0, changed["output_tokens"] - self.ri(1, 200))
        if changed["output_tokens"] == 0:
            changed["output_tokens"] = 1
        self.out.append(_dumps(changed))
        return True

    def bad(self, acct: _SAccount, now: int) -> None:
        ms = self.stamp(acct, now)
        if self.rng.random() < 0.5:
            record = self.account_record(acct, "credit.recharge", ms, amount=self.rng.choice(("-5.00", "abc", 12)))
        else:
            record = self.usage(acct, now)
            del record["model"]
        self.out.append(_dumps(record))

    def run(self) -> list[str]:
        n = self.n
        if n <= 0:
            return []
        rng = self.rng
        body = max(0, n - len(self.accounts))  # the rest: one closing clock.tick per account
        self.prelude()
        base = len(self.out)
        span = max(1, body - base)
        plan = self.plan()
        step = 0
        while len(self.out) < body:
            p = (len(self.out) - base) / span
            now = self.start_ms + int(self.span_ms * p)
            if step < len(plan) and plan[step][0] <= p:
                _, idx, action = plan[step]
                step += 1
                self.scripted(self.accounts[idx], action, now)
                continue
            acct = self.pick_account(p)
            r = rng.random()
            if r < 0.008:
                if not self.redeliver():
                    self.emit(self.usage(acct, now))
            elif r < 0.010:
                if not self.conflicting():
                    self.emit(self.usage(acct, now))
            elif r < 0.013:
                self.bad(acct, now)
            else:
                self.emit(self.usage(acct, now))
        out = self.out[:body]
        for acct in self.accounts:  # 2 h past the account's latest record: every hour closes
            out.append(_dumps(self.account_record(acct, "clock.tick", acct.last_ms + 2 * MS_HOUR)))
        return out[:n]


def generate_settlement(n_records: int = 3000, seed: int = 1, accounts: int = 6) -> list[str]:
    """A deterministic multi-hour workload for settlement and arrears (BILLING_RULES §9).

    Event time runs 8 h from 2024-09-18 09:00 +08:00 (every model priced), then every account
    gets a `clock.tick` 2 h past its latest record so that every hour closes; the result has
    exactly `n_records` lines (for n_records >= the prelude plus one tick per account).
    Accounts play roles by index modulo 6:
    - 0 rich: 2000 cash, a 50 voucher without expiry, a 1-day voucher later, whitelisted for
      longcontext; never in arrears;
    - 1 recover: 2 cash and a 5 voucher expiring at 11:30; in arrears from about hour 11,
      recharges 300 mid-run and recovers;
    - 2 long_arrears: 1 cash; in arrears from about hour 10, a 1.00 recharge that only pays
      part of the debt, then 1500 near the end (in arrears well over 3 h);
    - 3 vouchers: 15 cash and vouchers with every ordering case (two with the same expiry,
      granted out of voucher_id order; one expiring after the first hour; one expiring exactly
      at an hour's end; no-expiry ones), a later voucher, a re-grant of a known voucher_id
      (no-op), a 20 recharge;
    - 4 free_console: light, mostly console calls, never past the free quota, so every hour it
      has settles at 0; idle for a stretch with a `clock.tick` in it;
    - 5 late: 200 cash, two recharges, more late calls.
    All but free_console use big calls (lite / plus-v2 up to 32k tokens, max, base, plus,
    text_to_image) so the 1,000,000 free tokens run out in the first hour or so. About 0.8% of
    calls (3% for `late`) are 20-90 minutes late, many of them for already settled hours
    (adjustments); 5% are console calls. Also exact re-deliveries (0.8%, credit records too),
    conflicting re-deliveries (0.2%), schema-invalid records (0.3%) and unknown models (0.3%).
    Each account's keys are created in its prelude, before any use.
    """
    return _SettlementGenerator(n_records, seed, accounts).run()
