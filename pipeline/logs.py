"""Logging for every `billing` command: our lines by default, the libraries' chatter on request.

Levels: the long-running commands (`up`, `worker`) log the pipeline's INFO lines, one per batch
among them, and the libraries' warnings; the other commands only the pipeline's warnings and the
libraries' errors (their own one-line error says what failed; kafka-python's "blocking the event
loop" or urllib3's retry notices before it are noise). `-v` gives the pipeline's INFO lines and
the libraries' warnings everywhere, `-vv` the pipeline's DEBUG lines and the libraries' INFO
(aiokafka, kafka-python, Faust, mode, aiohttp, ...), `-vvv` everything. A Kafka client's
rebalance notices are not news to an operator, and 58 of them drowned the lines that were.

`BILLING_LOG_FORMAT=json` writes one JSON object per line (python-json-logger) for log
collectors; the default is plain text. The handler writes to whatever `sys.stderr` is at the time
of the call, so that a progress bar that redirects stderr (rich) prints log lines above itself
instead of being broken by them.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

THIRD_PARTY = ("aiokafka", "kafka", "faust", "mode", "aiohttp", "clickhouse_connect", "chdb", "urllib3", "asyncio", "venusian")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on the current sys.stderr (looked up at each record, not at creation)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current stderr


def levels(verbosity: int, long_running: bool) -> tuple[int, int]:
    """(the pipeline's level, the libraries' level) for -v counted `verbosity` times."""
    ours = logging.INFO if long_running or verbosity >= 1 else logging.WARNING
    if verbosity >= 2:
        ours = logging.DEBUG
    theirs = {0: logging.WARNING, 1: logging.WARNING, 2: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity == 0 and not long_running:
        theirs = logging.ERROR  # a short command's own one-line error says it; a retry warning before it is noise
    return ours, theirs


def setup(verbosity: int = 0, fmt: str = "text", long_running: bool = False) -> None:
    """Configure the root logger once per command (replacing handlers set before)."""
    ours, theirs = levels(verbosity, long_running)
    handler = CurrentStderrHandler()
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, CurrentStderrHandler)] + [handler]
    root.setLevel(min(ours, theirs))
    for name in ("billing", "pipeline"):
        logging.getLogger(name).setLevel(ours)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(theirs)
    logging.captureWarnings(True)  # warnings.warn from the libraries go through the same handler
    logging.getLogger("py.warnings").setLevel(theirs)
