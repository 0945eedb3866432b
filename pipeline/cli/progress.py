"""Progress for long commands (publish, rebill, wait): rich's progress bar on a terminal, plain
periodic lines otherwise (a CI log, a pipe).

rich (the terminal library the Python ecosystem uses for this) draws the bar with a percentage,
a rate smoothed over the last 30 seconds and an ETA, and redirects stderr while it is shown, so
that a log line (kafka-python's warnings among them; see pipeline/logs.py) is printed above the
bar instead of breaking into it. The bar appears only after a second: quick runs print nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any, TextIO

SHOW_AFTER_S = 1.0


class Progress:
    """`update(count)` as work goes on, `done()` at the end (also safe after a failure)."""

    def __init__(
        self, label: str, total: int | None = None, stream: TextIO | None = None, every_s: float = 1.0, unit: str = "records"
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        # None when the process started with stderr closed; a progress line never stops the work
        self.stream: TextIO | None = stream if stream is not None else sys.stderr
        self.tty = self.stream is not None and _isatty(self.stream)
        self.every_s = every_s if self.tty else max(every_s, 5.0)
        self.started = time.monotonic()
        self._last = self.started
        self.count = 0
        self._bar: Any = None
        self._task: Any = None

    def update(self, count: int, total: int | None = None) -> None:
        self.count = count
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.tty:
            if self._bar is None and self.stream is not None and now - self.started >= SHOW_AFTER_S:
                self._guarded(self._start_bar)
            if self._bar is not None:
                self._guarded(lambda: self._bar.update(self._task, completed=count, total=self.total))
        elif now - self._last >= self.every_s:
            self._last = now
            if not write_or_drop(self.stream, self.line() + "\n"):
                self.stream = None

    def done(self) -> None:
        if self._bar is not None:
            self._guarded(lambda: self._bar.update(self._task, completed=self.count, total=self.total))
            self._guarded(self._stop_bar)
        elif not self.tty and time.monotonic() - self.started >= SHOW_AFTER_S:
            if not write_or_drop(self.stream, self.line() + "\n"):
                self.stream = None

    def line(self) -> str:
        """The plain-text form: count of total, percentage, average rate, ETA."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.count / elapsed
        text = f"{self.label}: {self.count:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.count / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:,.0f}/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {_duration((self.total - self.count) / rate)}"
        return text

    def _guarded(self, draw: Any) -> None:
        """Draw the bar; a terminal whose reader left (EPIPE) or was closed ends the bar and the
        line for good, never the work the bar reports on."""
        try:
            draw()
        except (OSError, ValueError, SystemExit):
            bar, self._bar = self._bar, None
            self.stream = None
            if bar is not None:
                try:
                    bar.stop()
                except Exception:  # rich half-started (its own redirects left as they were)
                    pass
                except SystemExit:
                    pass

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            _rate_column(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            redirect_stderr=True,
            redirect_stdout=False,
        )
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.count, unit=self.unit)
        self._bar.start()
        atexit.register(self._stop_bar)  # an exception between update() and done() still restores the terminal

    def _stop_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second over rich's smoothing window (the last 30 s)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f}/s" if speed else "?/s", style="cyan")

    return RateColumn()


class ConsumerProgress:
    """`billing wait`'s progress: the workers' consumer group's committed offsets moving towards
    the offsets the barrier got, in messages (a message holds up to 200 records). The offsets are
    asked of Kafka about once a second; if the broker cannot say, the wait goes on without a bar."""

    def __init__(self, label: str, bootstrap: str, group: str, topic: str, ends: dict[int, int], every_s: float = 1.0) -> None:
        self.bootstrap, self.group, self.topic, self.ends = bootstrap, group, topic, ends
        self.every_s = every_s
        self.progress = Progress(label, unit="messages")
        self._admin: Any = None
        self._start: dict[int, int] | None = None
        self._next = time.monotonic() + SHOW_AFTER_S
        self._broken = False

    def poll(self) -> None:
        if self._broken or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        try:
            committed = self._committed()
        except Exception:  # progress is a nicety: never fail a wait over it
            self._broken = True
            return
        if self._start is None:
            self._start = committed
        total = sum(max(end - self._start.get(p, 0), 0) for p, end in self.ends.items())
        done = sum(
            min(max(committed.get(p, 0) - self._start.get(p, 0), 0), max(end - self._start.get(p, 0), 0)) for p, end in self.ends.items()
        )
        self.progress.update(done, total)

    def _committed(self) -> dict[int, int]:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="billing-wait-progress")
        offsets = self._admin.list_group_offsets(self.group).get(self.group, {})
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic and meta.offset >= 0}

    def done(self, caught_up: bool = True) -> None:
        if self._start is not None and caught_up:
            self.progress.update(self.progress.total or self.progress.count)
        self.progress.done()
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def write_or_drop(stream: TextIO | None, text: str) -> bool:
    """Write and flush `text`; False if the stream is gone (closed, or its reader left: EPIPE).
    A stream whose reader left is pointed at /dev/null, so that what is still buffered in it
    does not fail again when the interpreter flushes it at exit (exit status 120)."""
    if stream is None:
        return False
    try:
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError):  # BrokenPipeError is an OSError; ValueError: the stream was closed
        _to_devnull(stream)
        return False


def _to_devnull(stream: TextIO) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
