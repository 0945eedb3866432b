"""A batch that fails for a reason in its data: find the message(s) responsible, reject their
records with the error, and bill everyone else (issue: no record stops billing for others).

The fold's own checks (column_ranges) keep every value it knows of within its column; this is the
net under them, for whatever else ClickHouse refuses. Framework-free: the worker runs it on its
ClickHouse thread, the tests on a processor with a client that refuses chosen rows.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable

from clickhouse_connect.driver.exceptions import OperationalError

from pipeline.batch.processor import BatchProcessor, BatchResult, Message, OffsetGap
from pipeline.store.chclient import ClickHouseUnavailable
from pipeline.stream.partitioning import PartitionMismatch

log = logging.getLogger("billing.worker")
LOG_INCONSISTENT = (OffsetGap, PartitionMismatch)
MAX_POISON_STREAK = 5  # messages refused in a row, with no good write between: the fault is not theirs
# Codes of ClickHouse errors that pass (load, space, replication): retried, never blamed on a record.
TRANSIENT_CODES = (
    "MEMORY_LIMIT_EXCEEDED",
    "TOO_MANY_PARTS",
    "TIMEOUT_EXCEEDED",
    "NOT_ENOUGH_SPACE",
    "TABLE_IS_READ_ONLY",
    "KEEPER_EXCEPTION",
    "NO_ZOOKEEPER",
    "ALL_CONNECTION_TRIES_FAILED",
    "NETWORK_ERROR",
    "SOCKET_TIMEOUT",
    "TOO_MANY_SIMULTANEOUS_QUERIES",
    "UNKNOWN_TABLE",
    "UNKNOWN_DATABASE",
    "Cannot lock file",
    "No space left",
    "Connection refused",
    "timed out",
)


def _halves(messages: list[Message]) -> list[list[Message]]:
    """The messages as two groups in log order (one group if there is one message)."""
    half = (len(messages) + 1) // 2
    return [messages[:half], messages[half:]] if len(messages) > 1 else [messages]


def transient(exc: BaseException) -> bool:
    """A failure of ClickHouse itself (down, full, overloaded, not migrated), not of the data: wait
    and retry. Anything else that fails the same batch again and again is looked for in its records."""
    if isinstance(exc, (ClickHouseUnavailable, OperationalError, OSError, TimeoutError, MemoryError)):
        return True
    text = str(exc)
    return any(code in text for code in TRANSIENT_CODES)


class Isolator:
    """Tries a failing batch in halves, down to the messages that fail alone. Guarantees, in order:

    1. A group of messages that writes is billed as usual; each message is in exactly one group
       that was written, or is the one message of a group that failed.
    2. A message that fails alone is tried again with every record of it rejected (`out_of_range`,
       the error as the detail). Only if that goes in is the message taken to be the cause.
    3. If the rejection cannot be written either, or messages keep being refused with no good write
       between them (a broken table, not a bad record), nothing is blamed: None, and the worker
       retries the batch as a whole and reports itself stuck.
    4. Rows a failed attempt wrote past the accounts' commit points are deleted before the next
       attempt (BatchProcessor rolls back), so a rejected record leaves nothing in any table but
       its rejection and its raw archive row.
    5. The groups are written in log order (each the next messages of the batch), and the caller
       acknowledges the batch only once the whole of it is written. The processor then forgets
       which of its messages were refused: a worker fed bad records for months keeps no list of
       them.

    Halves, not one message at a time: on gateway traffic a batch is 25,000 single-record
    messages, and a write costs about as much whatever its size (a unit's 14 inserts), so one
    message at a time held billing for everyone for about half an hour to find one bad record.
    Halving finds it in about 2 log2(n) attempts, plus one write per group that goes in."""

    def __init__(self, on_poisoned: Callable[[], None] | None = None) -> None:
        self.poison_streak = 0
        self.on_poisoned = on_poisoned or (lambda: None)  # the worker's metric

    def run(self, processor: BatchProcessor, messages: list[Message]) -> BatchResult | None:
        total = BatchResult()
        groups: deque[list[Message]] = deque(_halves(messages))
        while groups:
            group = groups.popleft()
            try:
                total.merge(processor.process(group))
                self.poison_streak = 0
                continue
            except LOG_INCONSISTENT:  # the log, not a record: the worker stops loudly
                raise
            except Exception as exc:
                if transient(exc) or self.poison_streak >= MAX_POISON_STREAK:
                    return None
                error = f"{type(exc).__name__}: {exc}"
            if len(group) > 1:
                groups.extendleft(reversed(_halves(group)))  # its first half next, then its second
                continue
            rejected = self._reject(processor, group[0], error)
            if rejected is None:
                return None
            total.merge(rejected)
        for msg in messages:  # written, its rejections with it: a delivery again is skipped by position
            processor.poisoned.pop((msg.partition, msg.offset), None)
        return total

    def _reject(self, processor: BatchProcessor, msg: Message, error: str) -> BatchResult | None:
        processor.poisoned[(msg.partition, msg.offset)] = error
        try:
            result = processor.process([msg])
        except Exception as exc:
            del processor.poisoned[(msg.partition, msg.offset)]
            log.error(
                "partition %d offset %d: refused even as a rejection (%r): not its fault; retrying the batch",
                msg.partition,
                msg.offset,
                exc,
            )
            return None
        self.poison_streak += 1
        self.on_poisoned()
        log.error(
            "partition %d offset %d: ClickHouse refused its rows (%s); its records are rejected, billing goes on",
            msg.partition,
            msg.offset,
            error[:300],
        )
        return result
