"""Top functions of a py-spy raw profile (`py-spy record -f raw`), for `python -m bench --profile`.

A raw file has one line per distinct stack: frames joined by ';', root first, then a space and
the number of samples. A frame reads `function (file:line)`; the line is where that function was
at the sample, so frames are folded per function (file without the line) before counting, or one
function would be spread over many rows. `--subprocesses` adds a `process PID:"cmd"` root frame,
and `--threads` a thread frame: neither is a function, both are dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_NOT_FUNCTIONS = ("process ", "thread ")
_LIBRARY_PREFIX = re.compile(r"^.*/(?:site-packages|dist-packages|lib/python\d+(?:\.\d+)?)/")
_REPO_PREFIX = str(Path(__file__).resolve().parents[1]) + "/"


@dataclass
class Profile:
    samples: int = 0
    in_imports: int = 0  # samples with the import system on the stack: startup, and lazy imports later
    self_samples: Counter[str] = field(default_factory=Counter)
    cumulative: Counter[str] = field(default_factory=Counter)


def function_of(frame: str) -> str:
    """`func (/venv/lib/python3.11/site-packages/faust/x.py:123)` -> `func (faust/x.py)`: one row
    per function; paths relative to the library directory or to this repository."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = _LIBRARY_PREFIX.sub("", match.group("file"))
    if path.startswith(_REPO_PREFIX):
        path = path[len(_REPO_PREFIX) :]
    return f"{match.group('func')} ({path})"


def parse_lines(lines: list[str]) -> Profile:
    """Self samples go to a stack's last function; cumulative ones to every function on it, once
    per stack even when it recurses (so no function exceeds 100%)."""
    profile = Profile()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_of(f) for f in stack.split(";") if f and not f.startswith(_NOT_FUNCTIONS)]
        if not functions:
            continue
        profile.samples += count
        if any(f.endswith("(<frozen importlib._bootstrap>)") for f in functions):
            profile.in_imports += count
        profile.self_samples[functions[-1]] += count
        for function in set(functions):
            profile.cumulative[function] += count
    return profile


def parse_file(path: Path) -> Profile:
    return parse_lines(path.read_text(encoding="utf-8", errors="replace").splitlines())


def render(profile: Profile, top: int = 25, rate_hz: float | None = None) -> str:
    """Two tables, top functions by self and by cumulative samples, with their share."""
    total = max(profile.samples, 1)
    seconds = f" (at {rate_hz:g} Hz: {profile.samples / rate_hz:.1f} s of non-idle thread time)" if rate_hz else ""
    out = [
        f"{profile.samples} samples{seconds}; {profile.in_imports} ({100 * profile.in_imports / total:.1f}%) "
        "are in imports (the worker's startup, and lazy imports on its first batches), counted below too"
    ]
    for title, counter in (("self", profile.self_samples), ("cumulative", profile.cumulative)):
        out.append(f"top {top} functions by {title} samples:")
        out.append(f"{'samples':>8} {'share':>6}  function")
        for function, count in counter.most_common(top):
            out.append(f"{count:>8} {100 * count / total:>5.1f}%  {function}")
    return "\n".join(out)
