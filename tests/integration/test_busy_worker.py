"""A worker writing a large unit (or retrying ClickHouse) answers its API late. Readers say
so plainly, and `billing wait` keeps waiting instead of failing on the first slow answer."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator

import pytest

from pipeline.cli.commands import wait_for
from pipeline.settings import load_settings
from pipeline.store.reader import ApiReader, WorkerBusy
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_api() -> Iterator[str]:
    """An API that answers every request after 1 s."""

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(1.0)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_late_answer_is_worker_busy_with_what_to_do(slow_api: str) -> None:
    with pytest.raises(WorkerBusy, match="did not answer within 0.2s.*writing a large unit"):
        ApiReader(slow_api, timeout_s=0.2).bills(None, None, None)
    assert ApiReader(slow_api, timeout_s=5).bills(None, None, None) == []


class BusyThenDone:
    """The worker's answers to `billing wait`: busy twice, then every partition caught up."""

    def __init__(self, partitions: int) -> None:
        self.calls = 0
        self.partitions = partitions

    def barrier_partitions(self, barrier_id: str) -> int:
        self.calls += 1
        if self.calls <= 2:
            raise WorkerBusy("the worker did not answer within 60s")
        return self.partitions


def test_billing_wait_waits_through_a_busy_worker(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(data_dir=str(stack.data_dir))  # where the stack's control key is
    reader = BusyThenDone(settings.partitions)
    assert wait_for(reader, stack.kafka(), settings, timeout=30) is True
    assert reader.calls == 3
    assert "still waiting" in capsys.readouterr().err


def test_billing_wait_gives_up_at_its_deadline(stack: Stack) -> None:
    class AlwaysBusy(BusyThenDone):
        def barrier_partitions(self, barrier_id: str) -> int:
            time.sleep(0.2)
            raise WorkerBusy("the worker did not answer within 60s")

    with pytest.raises(WorkerBusy):
        wait_for(AlwaysBusy(4), stack.kafka(), load_settings(data_dir=str(stack.data_dir)), timeout=0.5)
