"""Progress lines for long commands: count of total, percentage, rate and ETA in the plain form
(CI logs, pipes); the terminal form is rich's bar."""

from __future__ import annotations

import io
import re

import pytest

from pipeline.cli import progress
from pipeline.cli.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_plain_lines_have_percentage_rate_and_eta(clock: Clock) -> None:
    out = io.StringIO()
    p = Progress("published", total=1000, stream=out)
    clock.now += 5.0
    p.update(250)
    clock.now += 5.0
    p.update(500)
    p.done()
    lines = out.getvalue().splitlines()
    assert lines[0] == "published: 250/1,000 records (25%), 50/s, ETA 0:15"
    assert lines[1] == "published: 500/1,000 records (50%), 50/s, ETA 0:10"
    assert lines[2] == lines[1]  # the last state once more at the end


def test_unknown_total_has_no_eta(clock: Clock) -> None:
    out = io.StringIO()
    p = Progress("published", stream=out, unit="lines")
    clock.now += 6.0
    p.update(600)
    assert out.getvalue() == "published: 600 lines, 100/s\n"


def test_a_quick_run_prints_nothing(clock: Clock) -> None:
    out = io.StringIO()
    p = Progress("published", total=10, stream=out)
    p.update(10)
    p.done()
    assert out.getvalue() == ""


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_shows_percentage_count_and_eta(clock: Clock) -> None:
    out = Tty()
    p = Progress("billing: rebill", total=200, stream=out)
    clock.now += 2.0
    p.update(50)
    p.update(100)
    p.done()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "billing: rebill" in text and "100/200" in text and "50%" in text and "ETA" in text
