"""Progress lines for long commands: redrawn in place on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO = sys.stderr, every_s: float = 1.0) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.every_s = every_s if stream.isatty() else max(every_s, 5.0)
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
        if self.stream.isatty():
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
