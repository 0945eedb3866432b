"""Publish -> queryable bill latency at a steady offered load.

A paced producer (the product's own publisher settings, `pipeline.ingest.publish.make_producer`) sends
fresh usage records for a few new accounts at `offered_rps`, stamped with the wall clock. Every
`marker_every_s` it also sends a marker: a usage record of a dedicated marker account. The
marker's latency is from just before its `send()` to the first answer of the worker's query API
(GET /api/bills?account=...) whose bill line counts it (markers of one account are applied in
order, so the line's `requests` count tells which markers are visible). Polled every
`poll_s` while a marker is outstanding, so the figure includes up to one poll interval and the
query itself: what a user polling the API would see.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from bench.procs import log
from bench.stack import BillingStack
from pipeline.ingest.publish import make_producer

TZ8 = timezone(timedelta(hours=8))
MODEL = "xingchen-lite"


def _now_ts(offset_s: float = 0.0) -> str:
    return (datetime.now(TZ8) + timedelta(seconds=offset_s)).isoformat(timespec="milliseconds")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _setup_lines(accounts: list[str], keys: dict[str, str]) -> list[bytes]:
    lines = []
    for acc in accounts:
        base = {"account_id": acc}
        lines.append(orjson.dumps({**base, "type": "api_key.created", "timestamp": _now_ts(-120), "api_key_id": keys[acc]}))
        lines.append(orjson.dumps({**base, "type": "credit.recharge", "timestamp": _now_ts(-119), "amount": "1000000"}))
        lines.append(
            orjson.dumps(
                {**base, "type": "limits.set", "timestamp": _now_ts(-118), "qps": 1_000_000, "qpm": 100_000_000, "tpm": 1_000_000_000}
            )
        )
    return lines


def run(
    stack: BillingStack,
    workdir: Path,
    seconds: float,
    offered_rps: float = 2000.0,
    marker_every_s: float = 0.5,
    load_accounts: int = 4,
    poll_s: float = 0.05,
    drain_timeout_s: float = 60.0,
    keyed_accounts: list[str] | None = None,
) -> dict[str, Any]:
    """With `keyed_accounts` (accounts that already have key `k-<account>` and credit, e.g.
    bench.gateway's) the load is spread over them, one record per message, a random account each."""
    run_id = uuid.uuid4().hex[:6]
    marker = f"bench-lat-{run_id}-marker"
    accounts = [f"bench-lat-{run_id}-{i}" for i in range(load_accounts)]
    keys = {acc: f"sk-bench-{run_id}-{i}" for i, acc in enumerate([*accounts, marker])}
    setup = workdir / "latency-setup.jsonl"
    setup.write_bytes(b"\n".join(_setup_lines([*accounts, marker], keys)) + b"\n")
    if keyed_accounts:
        accounts = list(keyed_accounts)
        keys.update({acc: f"k-{acc}" for acc in accounts})
    stack.cli("publish", str(setup), timeout=120)
    stack.cli("wait", "--timeout", "120", timeout=180)

    from pipeline.settings import load_settings

    topic = load_settings().input_topic
    producer = make_producer(stack.kafka)
    sent_at: list[float] = []  # marker i -> monotonic time just before its send()
    seen_at: dict[int, float] = {}
    lock = threading.Lock()
    sending_done = threading.Event()
    stop_all = threading.Event()
    errors: list[BaseException] = []
    counts = {"load": 0, "markers": 0, "polls": 0}
    rng = random.Random(7)

    def usage(account: str, event_id: str) -> bytes:
        return orjson.dumps(
            {
                "account_id": account,
                "event_id": event_id,
                "timestamp": _now_ts(),
                "api_key_id": keys[account],
                "model": MODEL,
                "input_tokens": rng.randint(50, 1500),
                "output_tokens": rng.randint(20, 400),
            }
        )

    def sender() -> None:
        try:
            t0 = time.monotonic()
            next_marker = t0
            end = t0 + seconds
            sent = 0
            while not stop_all.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                if now >= next_marker:
                    value = usage(marker, f"{run_id}-M{len(sent_at)}")
                    with lock:
                        sent_at.append(time.monotonic())
                    producer.send(topic, key=marker.encode(), value=value)
                    counts["markers"] += 1
                    sent += 1
                    next_marker += marker_every_s
                due = int((now - t0) * offered_rps)
                while sent < due:
                    acc = accounts[rng.randrange(len(accounts))] if keyed_accounts else accounts[sent % len(accounts)]
                    producer.send(topic, key=acc.encode(), value=usage(acc, f"{run_id}-L{sent}"))
                    counts["load"] += 1
                    sent += 1
                time.sleep(0.002)
            producer.flush()
            counts["send_seconds"] = time.monotonic() - t0  # type: ignore[assignment]
        except BaseException as exc:
            errors.append(exc)
        finally:
            sending_done.set()

    def poller() -> None:
        deadline = None
        try:
            while not stop_all.is_set():
                with lock:
                    outstanding = len(sent_at) - len(seen_at)
                    total_sent = len(sent_at)
                if sending_done.is_set():
                    if outstanding == 0:
                        return
                    deadline = deadline or time.monotonic() + drain_timeout_s
                    if time.monotonic() > deadline:
                        return
                if outstanding:
                    rows = stack.bills(marker)
                    arrived = time.monotonic()
                    counts["polls"] += 1
                    visible = sum(int(r["requests"]) for r in rows if r.get("item") == MODEL)
                    with lock:
                        for i in range(min(visible, total_sent)):
                            if i not in seen_at:
                                seen_at[i] = arrived - sent_at[i]
                time.sleep(poll_s)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=sender, name="bench-load", daemon=True),
        threading.Thread(target=poller, name="bench-poll", daemon=True),
    ]
    log(
        f"latency: offering {offered_rps:g} records/s for {seconds:g}s over {len(accounts)} accounts, "
        f"a marker every {marker_every_s:g}s, polling the API every {poll_s * 1000:.0f} ms"
    )
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(1.0)
            if not stack.alive():
                raise RuntimeError(f"the billing worker died during the latency phase:\n{stack.log_tail()}")
    finally:
        stop_all.set()
        for t in threads:
            t.join(10)
        producer.close(timeout=10)
    if errors:
        raise RuntimeError(f"latency phase failed: {type(errors[0]).__name__}: {errors[0]}")
    latencies = [seen_at[i] for i in sorted(seen_at)]
    send_s = float(counts.get("send_seconds") or seconds)
    return {
        "offered_rps": offered_rps,
        "achieved_offered_rps": (counts["load"] + counts["markers"]) / send_s,
        "seconds": send_s,
        "samples": len(latencies),
        "markers_sent": counts["markers"],
        "markers_lost": counts["markers"] - len(latencies),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else None,
        "latencies_s": [round(x, 3) for x in latencies],  # in marker order: where a spike fell
        "mean_s": statistics.fmean(latencies) if latencies else None,
        "poll_interval_s": poll_s,
        "api_polls": counts["polls"],
    }
