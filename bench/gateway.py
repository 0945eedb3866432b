"""Gateway-shaped traffic: what an API gateway sends, not what `billing publish` sends.

An API gateway produces one record per Kafka message, straight into `billing.input`, keyed by
account, for many interleaved accounts. Every throughput figure of the project before issue 18
came from `billing publish` (an account's consecutive records packed into one message) over 8
accounts, which hides two costs: the stream's cost per message, and the batch processor's cost
per account a batch touches. These shapes keep both in view:

    Shape("gw_100k", accounts=100_000, records=200_000)   # one record per message, Zipf activity
    Shape("gw_1m", accounts=1_000_000, records=2_000_000)

The traffic of a shape: every account makes at least one call (the long tail), and the other
records are drawn by a Zipf law over the accounts (rank r has weight r^-s, s = 1.1: a few heavy
accounts, a long tail). Records are interleaved at random and stamped in that order over
`span_hours` of event time, so each account's records are in time order, as a gateway emits them.
At least 90% are usage: 2% of all records are exact re-deliveries of a recent call (a producer's
retry), 1% recharges, 1% records that break the schema (rejections), 2% console calls.

Each account needs a key and credit before its calls bill: `setup_messages` gives every account
an `api_key.created` and a `credit.recharge` (and the heaviest 1% a `limits.set`, as a gateway's
big customers have raised limits), framed per account as `billing publish` frames them; the
bench publishes and processes them before the timed part.

`produce` writes (key, value) pairs with a plain aiokafka producer (murmur2 on the key bytes, as
Faust and `billing publish` partition), which is how a gateway would write them.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

import orjson

from pipeline.batch.framing import encode_group
from pipeline.batch.topic_json import kept

TZ8 = timezone(timedelta(hours=8))
START = datetime(2024, 9, 18, 8, 0, tzinfo=TZ8)  # every model has a price in force from 2024-09-18
MODELS = ("xingchen-lite", "xingchen-base", "xingchen-plus", "xingchen-plus-v2", "xingchen-max")
ZIPF_S = 1.1
HEAVY_SHARE = 0.01  # accounts with raised limits
DUPLICATE_SHARE, RECHARGE_SHARE, INVALID_SHARE, CONSOLE_SHARE = 0.02, 0.01, 0.01, 0.02


@dataclass(frozen=True)
class Shape:
    """A gateway workload: `records` single-record messages from `accounts` accounts."""

    name: str
    accounts: int
    records: int
    span_hours: float = 2.0
    seed: int = 1
    start: datetime = START

    @property
    def prefix(self) -> str:
        return f"{self.name}-s{self.seed}"

    def account(self, rank: int) -> str:
        return f"{self.prefix}-{rank:07d}"


def _ts(moment_ms: int) -> str:
    """RFC 3339, +08:00, milliseconds (the shape every producer here writes)."""
    moment = datetime.fromtimestamp(moment_ms / 1000, TZ8)
    return moment.isoformat(timespec="milliseconds")


class _Clock:
    """Timestamps in +08:00 for increasing milliseconds, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        second, milli = divmod(ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, TZ8).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{milli:03d}+08:00"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def setup_messages(shape: Shape) -> Iterator[tuple[bytes, bytes]]:
    """(key, value): per account its key, its credit and (heaviest 1%) raised limits, in one
    message framed as `billing publish` frames an account's consecutive records. Stamped an hour
    before the traffic starts."""
    at = _ts(_ms(shape.start) - 3_600_000)
    heavy = max(1, int(shape.accounts * HEAVY_SHARE))
    for rank in range(shape.accounts):
        acc = shape.account(rank)
        records = [
            orjson.dumps({"type": "api_key.created", "account_id": acc, "timestamp": at, "api_key_id": f"k-{acc}"}),
            orjson.dumps({"type": "credit.recharge", "account_id": acc, "timestamp": at, "amount": "100000"}),
        ]
        if rank < heavy:
            records.append(
                orjson.dumps(
                    {"type": "limits.set", "account_id": acc, "timestamp": at, "qps": 100_000, "qpm": 1_000_000, "tpm": 1_000_000_000}
                )
            )
        yield acc.encode(), kept(encode_group(records))


def activity(shape: Shape, rng: random.Random) -> list[int]:
    """Account ranks, one per record, in send order: each account once, the rest by Zipf."""
    ranks = list(range(shape.accounts)) if shape.records >= shape.accounts else rng.sample(range(shape.accounts), shape.records)
    extra = shape.records - len(ranks)
    if extra > 0:
        cum = list(itertools.accumulate((r + 1) ** -ZIPF_S for r in range(shape.accounts)))
        ranks += rng.choices(range(shape.accounts), cum_weights=cum, k=extra)
    rng.shuffle(ranks)
    return ranks


def traffic(shape: Shape) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per message, one record each, in send order (module doc for the mix)."""
    rng = random.Random(shape.seed)
    ranks = activity(shape, rng)
    start = _ms(shape.start)
    step = shape.span_hours * 3_600_000 / max(1, shape.records)
    clock = _Clock()
    recent: list[tuple[bytes, bytes]] = []
    for i, rank in enumerate(ranks):
        acc = shape.account(rank)
        key = acc.encode()
        roll = rng.random()
        ts = clock(start + int(i * step))
        if roll < DUPLICATE_SHARE and recent:
            yield recent[rng.randrange(len(recent))]
            continue
        roll -= DUPLICATE_SHARE
        if roll < RECHARGE_SHARE:
            yield key, kept(orjson.dumps({"type": "credit.recharge", "account_id": acc, "timestamp": ts, "amount": "50"}))
            continue
        roll -= RECHARGE_SHARE
        call = {
            "account_id": acc,
            "event_id": f"{shape.prefix}-e{i}",
            "timestamp": ts,
            "api_key_id": f"k-{acc}",
            "model": MODELS[rng.randrange(len(MODELS))],
            "input_tokens": rng.randint(50, 1500),
            "output_tokens": rng.randint(20, 400),
        }
        if roll < INVALID_SHARE:
            call["input_tokens"] = -1  # breaks the schema: a rejection
        elif roll < INVALID_SHARE + CONSOLE_SHARE:
            call["channel"] = "console"
        value = kept(orjson.dumps(call))  # held with millions of others: exact size
        message = (key, value)
        if len(recent) < 1000:
            recent.append(message)
        else:
            recent[rng.randrange(1000)] = message
        yield message


async def _produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]], chunk: int) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        enable_idempotence=False,
    )
    await producer.start()
    sent = 0
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(pending) >= chunk:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]], chunk: int = 20_000) -> tuple[int, float]:
    """Send every message (one Kafka record each); returns (messages, seconds)."""
    started = time.perf_counter()
    sent = asyncio.run(_produce(bootstrap, topic, messages, chunk))
    return sent, time.perf_counter() - started


def distinct_accounts(messages: list[tuple[bytes, bytes]]) -> int:
    return len({key for key, _ in messages})
