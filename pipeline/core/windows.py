"""Tumbling event-time rate windows (BILLING_RULES §6): 1 s for QPS, 1 min for QPM and TPM."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.timestamps import US_PER_MINUTE, US_PER_SECOND

SECOND = "s"
MINUTE = "m"
WindowKey = tuple[str, int]  # (SECOND | MINUTE, window start in microseconds)
LIMIT_ORDER = {"qps": 0, "qpm": 1, "tpm": 2}  # the order `violated` reports a call's limits in


@dataclass(frozen=True, slots=True)
class Limits:
    qps: int
    qpm: int
    tpm: int

    def updated(self, qps: int | None, qpm: int | None, tpm: int | None) -> "Limits":
        return Limits(
            qps=self.qps if qps is None else qps,
            qpm=self.qpm if qpm is None else qpm,
            tpm=self.tpm if tpm is None else tpm,
        )


def minute_start(ts_us: int) -> int:
    """Start of the minute window (QPM, TPM) `ts_us` falls in: the one place a minute is floored,
    for the windows themselves and for which of them the worker keeps and loads."""
    return ts_us - ts_us % US_PER_MINUTE


def window_keys(ts_us: int) -> tuple[WindowKey, WindowKey]:
    """The second and the minute window a call at `ts_us` falls in."""
    return (SECOND, ts_us - ts_us % US_PER_SECOND), (MINUTE, minute_start(ts_us))


def violated(limits: Limits, second_requests: int, minute_requests: int, minute_tokens: int) -> tuple[str, ...]:
    """Limits a window exceeds once the call is counted in it, in the order qps, qpm, tpm (the
    shared empty tuple when none: the common case, per call)."""
    flags: tuple[str, ...] = ()
    if second_requests > limits.qps:
        flags += ("qps",)
    if minute_requests > limits.qpm:
        flags += ("qpm",)
    if minute_tokens > limits.tpm:
        flags += ("tpm",)
    return flags
