"""Logging: the pipeline's lines by default, the Kafka/Faust libraries' chatter only when asked,
JSON lines on request, and log lines written to whatever stderr is now (a progress bar's)."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from pipeline import logs


@pytest.fixture(autouse=True)
def restore_logging() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("py.warnings").setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    for name in ("billing", "pipeline", *logs.THIRD_PARTY):
        logging.getLogger(name).setLevel(logging.NOTSET)


def emitted(monkeypatch: pytest.MonkeyPatch, verbosity: int, long_running: bool, fmt: str = "text") -> str:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup(verbosity, fmt, long_running)
    logging.getLogger("billing.worker").info("batch: 10 records")
    logging.getLogger("aiokafka.consumer.group_coordinator").info("Joined group")
    logging.getLogger("kafka.conn").warning("connection refused")
    return stream.getvalue()


def test_the_worker_logs_its_batches_and_not_the_kafka_client(monkeypatch: pytest.MonkeyPatch) -> None:
    out = emitted(monkeypatch, 0, long_running=True)
    assert "batch: 10 records" in out and "Joined group" not in out and "connection refused" in out


def test_a_short_command_is_quiet_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert emitted(monkeypatch, 0, long_running=False) == ""  # its own error line says what failed
    out = emitted(monkeypatch, 1, long_running=False)
    assert "batch: 10 records" in out and "Joined group" not in out and "connection refused" in out


def test_vv_shows_the_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "Joined group" in emitted(monkeypatch, 2, long_running=False)


def test_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [json.loads(line) for line in emitted(monkeypatch, 0, long_running=True, fmt="json").splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("INFO", "billing.worker", "batch: 10 records"),
        ("WARNING", "kafka.conn", "connection refused"),
    ]
    assert all("time" in r for r in lines)


def test_the_handler_follows_sys_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    logs.setup(0, "text", True)
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)  # as rich's progress display does while it runs
    logging.getLogger("billing.worker").info("after the redirect")
    assert "after the redirect" in later.getvalue()
