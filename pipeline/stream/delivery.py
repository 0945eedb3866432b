"""Outputs delivered, not just handed over, before a batch's offsets are committed.

Faust's `topic.send()` returns once the message is in the producer's buffer; the future it
returns resolves when the broker has acknowledged it (or fails). A batch's status changes and
violations must be acknowledged before its input offsets are committed, or a long broker outage
loses them while the offsets move on. So every send's future is awaited, and a failure resends
from the first message not acknowledged, in the original order: the last copy of each account's
status on the compacted status topic is then still its latest (a resent message may duplicate
one that did land: the status topic is compacted and violations carry their event id).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from pipeline.stream import backoff

log = logging.getLogger(__name__)
M = TypeVar("M")


async def _first_failure(futures: Sequence[Awaitable[Any]]) -> tuple[int, BaseException] | None:
    results = await asyncio.gather(*futures, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            return index, result
    return None


async def deliver(
    messages: Sequence[M],
    send: Callable[[M], Awaitable[Awaitable[Any]]],
    *,
    describe: Callable[[M], str] = str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_delay: float = 0.5,
) -> int:
    """Send `messages` in order and wait until the broker acknowledged every one. `send(m)`
    returns (after queueing) the delivery future. On a failure, back off and go again from the
    first unacknowledged message. Returns how many rounds failed."""
    start, failures = 0, 0
    waits = backoff.delays(first_delay)
    while start < len(messages):
        futures: list[Awaitable[Any]] = []
        error: BaseException | None = None
        failed_at = len(messages)
        try:
            for message in messages[start:]:
                futures.append(await send(message))
        except Exception as exc:  # could not even queue it (producer stopped, buffer error...)
            error, failed_at = exc, start + len(futures)
        failure = await _first_failure(futures)
        if failure is not None:
            error, failed_at = failure[1], start + failure[0]
        if error is None:
            return failures
        failures += 1
        delay = next(waits)
        log.warning("output %s not delivered (%s); sending again from it in %.1fs", describe(messages[failed_at]), str(error)[:200], delay)
        await sleep(delay)
        start = failed_at
    return failures
