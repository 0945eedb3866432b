"""Progress lines for long commands: redrawn in place on a terminal, periodic lines otherwise.

A progress line is a courtesy: when its stream is gone (`billing publish f 2>&1 | head -1`, or
stderr closed) the command goes on without it, so it never stops the work it reports on.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None, every_s: float = 1.0) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr  # None when the process started with it closed
        tty = self.stream is not None and _isatty(self.stream)
        self.every_s = every_s if tty else max(every_s, 5.0)
        self.tty = tty
        self.started = time.monotonic()
        self._last = self.started
        self.count = 0

    def update(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._draw(final=False)

    def done(self) -> None:
        if time.monotonic() - self.started >= 1.0:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        of = f"/{self.total}" if self.total else ""
        text = f"{self.label}: {self.count}{of} ({self.count / elapsed:,.0f}/s)"
        if self.tty:
            text = "\r" + text + ("\n" if final else "")
        else:
            text += "\n"
        if self.stream is not None and not write_or_drop(self.stream, text):
            self.stream = None


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
