"""The synthetic workload (pipeline/demo/workload.py) is deterministic and covers every case the
oracle (tests/oracle.py) can tell apart."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]
for path in (TESTS, TESTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from oracle import KINDS, REASONS, expected, parse_rfc3339_ns  # noqa: E402

from pipeline.demo.workload import generate, write_jsonl  # noqa: E402

N = 5000
MODELS = (
    "xingchen-lite",
    "xingchen-base",
    "xingchen-plus",
    "xingchen-plus-v2",
    "xingchen-max",
    "xingchen-longcontext",
)
TS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+08:00$")


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return generate(N)


@pytest.fixture(scope="module")
def bodies(lines) -> list[dict]:
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def exp(lines):
    return expected(lines)


def test_deterministic(lines):
    assert generate(N) == lines
    assert generate(N, seed=2) != lines
    assert generate(300) == generate(300)
    assert generate(N, seed=1, accounts=3) != lines


def test_sizes():
    assert generate(0) == []
    assert len(generate(7)) == 7
    assert len(generate(1234, accounts=2, bad_fraction=0.0)) == 1234


def test_every_line_is_a_keyed_json_object(bodies):
    assert len(bodies) == N
    for body in bodies:
        assert isinstance(body, dict)
        assert isinstance(body.get("account_id"), str) and body["account_id"]


def test_timestamps_are_millisecond_rfc3339_in_plus_eight(bodies):
    stamps = [b["timestamp"] for b in bodies if isinstance(b.get("timestamp"), str)]
    good = [s for s in stamps if TS_FORMAT.match(s)]
    assert len(good) >= 0.97 * len(stamps)
    assert all(parse_rfc3339_ns(s) is not None for s in good if s[5:10] != "06-31" and s[11:13] != "24" and s[5:7] != "13")


def test_every_kind_and_reason(exp):
    assert set(exp.kinds) == set(KINDS)
    assert set(exp.reasons()) == set(REASONS)
    assert exp.duplicates > 0


def test_some_account_runs_through_the_free_quota(exp):
    assert any(used == 1_000_000 for used in exp.free_tokens_used.values())
    assert exp.straddles
    assert any(v["billed_input_tokens"] + v["billed_output_tokens"] > 0 for v in exp.bills.values())


def test_models_plugins_and_price_dates(bodies, exp):
    items = {item for (_, _, _, item) in exp.bills}
    assert set(MODELS) <= items
    assert "plugin:text_to_image" in items and len([i for i in items if i.startswith("plugin:")]) >= 3
    assert any(v["amount"] > 0 for (_, _, _, item), v in exp.bills.items() if item == "plugin:text_to_image")
    hours = {hour for (_, hour, _, _) in exp.bills}
    assert min(hours) < "2024-06-07T00:00:00+08:00" < max(hours)
    assert any(h.startswith("2024-09-17") for h in hours) and any(h.startswith("2024-09-18") for h in hours)
    v2_hours = {hour for (_, hour, _, item) in exp.bills if item == "xingchen-plus-v2"}
    assert v2_hours and min(v2_hours) >= "2024-09-18T00:00:00+08:00"
    usage = [b for b in bodies if b.get("type", "usage") == "usage"]
    assert {b.get("model") for b in usage} >= set(MODELS)
    assert sum(b.get("channel") == "console" for b in usage) > 50
    assert any(isinstance(b.get("plugins"), dict) and 0 in b["plugins"].values() for b in usage)
    assert any("input_breakdown" in b for b in usage)
    # no_price_in_force for calls before 2024-06-07 on base/plus/max/lite, and plus-v2 before 2024-09-18
    early = {
        b.get("model") for b in usage if isinstance(b.get("timestamp"), str) and b["timestamp"] < "2024-06-07" and b.get("model") in MODELS
    }
    assert {"xingchen-base", "xingchen-plus", "xingchen-max", "xingchen-lite"} <= early


def test_duplicates_exact_and_conflicting(lines, bodies):
    text_counts = Counter(lines)
    assert any(n > 1 for line, n in text_counts.items() if '"event_id"' in line)
    by_event = defaultdict(set)
    for line, body in zip(lines, bodies):
        if body.get("type", "usage") == "usage" and isinstance(body.get("event_id"), str):
            by_event[(body["account_id"], body["event_id"])].add(line)
    assert sum(len(texts) > 1 for texts in by_event.values()) >= 10


def test_key_life_cycle_and_lateness(bodies, exp):
    kinds = Counter(b.get("type", "usage") for b in bodies)
    assert kinds["api_key.revoked"] >= 8 and kinds["whitelist.add"] >= 2 and kinds["limits.set"] >= 3
    assert kinds["credit.voucher"] >= 2 and kinds["credit.recharge"] >= 8
    assert any("expires_at" in b for b in bodies if b.get("type") == "credit.voucher")
    # every account creates a key before its first usage record
    first = {}
    for i, b in enumerate(bodies):
        first.setdefault((b["account_id"], b.get("type", "usage")), i)
    for (account, kind), i in first.items():
        if kind == "usage":
            assert first[(account, "api_key.created")] < i
    # late calls: a few minutes to an hour behind the account's latest call
    latest: dict[str, int] = {}
    seen: set = set()
    late = 0
    for b in bodies:
        if b.get("type", "usage") != "usage" or b.get("event_id") in seen:
            continue  # re-deliveries can come from further back
        seen.add(b.get("event_id"))
        ts = parse_rfc3339_ns(b.get("timestamp"))
        if ts is None:
            continue
        prev = latest.get(b["account_id"])
        if prev is not None and prev - ts >= 60 * 10**9:
            late += 1
            assert prev - ts <= 62 * 60 * 10**9
        latest[b["account_id"]] = max(ts, prev or ts)
    assert late >= 0.01 * N


def test_bad_fraction(exp):
    invalid = exp.reasons()["invalid_schema"]
    assert 0.01 * N <= invalid <= 0.04 * N
    clean = expected(generate(2000, bad_fraction=0.0))
    assert clean.reasons()["invalid_schema"] == 0


def test_write_jsonl(tmp_path, lines):
    path = tmp_path / "w.jsonl"
    assert write_jsonl(path, lines[:100]) == 100
    assert path.read_text(encoding="utf-8").splitlines() == lines[:100]
