"""`python -m bench.distinct_accounts [--records N] [--batch M]`: the worker's memory against the
number of distinct account ids it has seen (issue 16: it grew with every one, valid or not).

The batch processor of a worker, in this process, on a fresh embedded engine, takes N records
(default 1,000,000), one per message, each naming an account id never seen before: a third valid
usage of an unknown key (rejected), a third invalid records (broken JSON under a fresh key), a
third recharges (applied). Prints this process's RSS (engine included) every 100,000 records, and
the number of account states held in memory. Bounded means: it levels off once the cache
(BILLING_MAX_CACHED_ACCOUNTS) is full.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import orjson

from pipeline.batch.processor import BatchProcessor, Message
from pipeline.core.catalog import load_catalog
from pipeline.settings import load_settings
from pipeline.store.chclient import connect, migrate


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def record(i: int) -> tuple[bytes, bytes]:
    acc = f"distinct-{i:08d}"
    ts = f"2024-09-18T10:{(i // 60) % 60:02d}:{i % 60:02d}+08:00"
    if i % 3 == 0:
        body = {
            "account_id": acc,
            "timestamp": ts,
            "event_id": f"e{i}",
            "api_key_id": "k",
            "model": "xingchen-plus",
            "input_tokens": 10,
            "output_tokens": 10,
        }
        return acc.encode(), orjson.dumps(body)
    if i % 3 == 1:
        return acc.encode(), b'{"account_id": "' + acc.encode() + b'", broken'
    return acc.encode(), orjson.dumps({"type": "credit.recharge", "account_id": acc, "timestamp": ts, "amount": "1"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000, help="messages per batch")
    args = parser.parse_args()
    settings = load_settings()
    with tempfile.TemporaryDirectory() as work:
        client = connect(f"chdb://{work}/clickhouse")
        migrate(client)
        processor = BatchProcessor(
            client, load_catalog(), "bench-distinct", auto_tick=True, max_cached_accounts=settings.max_cached_accounts
        )
        rows = []
        started = time.perf_counter()
        for first in range(0, args.records, args.batch):
            batch = [Message(0, i, *record(i)) for i in range(first, min(first + args.batch, args.records))]
            processor.process(batch)
            done = first + len(batch)
            if done % 100_000 == 0 or done == args.records:
                row = {
                    "records": done,
                    "rss_mib": round(rss_mib(), 1),
                    "states_in_memory": len(processor.states),
                    "seconds": round(time.perf_counter() - started, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        print(
            json.dumps(
                {
                    "max_cached_accounts": settings.max_cached_accounts,
                    "rss_mib_first": rows[0]["rss_mib"],
                    "rss_mib_last": rows[-1]["rss_mib"],
                    "rss_mib_max": max(r["rss_mib"] for r in rows),
                }
            )
        )


if __name__ == "__main__":
    main()
