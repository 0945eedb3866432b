"""A worker whose writes keep failing says so and still stops on a signal (issue 16)."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.ingest.publish import publish_lines
from pipeline.runtime import read_runtime
from tests.integration.test_faults import WorkerProcess

pytestmark = pytest.mark.integration

# Loaded by the worker's Python at start (PYTHONPATH): every ClickHouse write of a batch fails, as
# with a table that refuses its inserts. sink.py stays uncompiled, so the processor sees the patch.
FAILING_WRITES = """
from pipeline.store import sink

def _refuse(client, encoded, *lanes):
    raise RuntimeError("Code: 999. DB::Exception: this table refuses every insert (injected)")

sink.send = _refuse
"""


def status(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stuck_worker_is_unhealthy_and_stops_on_a_signal(broker: str, tmp_path: Path, sig: signal.Signals) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAILING_WRITES)
    worker = WorkerProcess(broker, tmp_path / "data", PYTHONPATH=str(hook)).start()
    try:
        worker.wait_ready()
        runtime = read_runtime(worker.data_dir)
        assert runtime is not None
        line = b'{"type":"credit.recharge","account_id":"a","timestamp":"2024-09-18T10:00:00+08:00","amount":"1"}'
        publish_lines([line], broker, "billing.input", quiet=True)
        deadline = time.monotonic() + 90
        while status(runtime.api + "/readyz")[0] != 503:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.5)
        code, health = status(runtime.api + "/healthz")
        assert code == 503 and health["status"] == "stuck" and "refuses every insert" in health["problem"]
        with urllib.request.urlopen(runtime.api + "/metrics", timeout=10) as response:
            assert any(
                line.startswith("billing_batch_consecutive_failures ") and float(line.split()[1]) >= 3
                for line in response.read().decode().splitlines()
            )
        assert worker.proc is not None
        started = time.monotonic()
        worker.proc.send_signal(sig)
        worker.proc.wait(30)
        assert time.monotonic() - started < 10, worker.log()
    finally:
        worker.stop()
