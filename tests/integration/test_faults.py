"""Faults for real: kill -9 a worker mid-workload, replay processed offsets, ClickHouse failing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.demo.workload import generate
from pipeline.ingest.publish import publish_lines
from pipeline.runtime import read_runtime
from tests.integration.stack import assert_hour_totals_equal_bills, bills_by_key
from tests.integration.test_pipeline import accounts_of
from tests.oracle import expected

pytestmark = pytest.mark.integration
TOPIC = "billing.input"


class WorkerProcess:
    """`billing worker` as production runs it: its own process, the broker elsewhere."""

    def __init__(self, bootstrap: str, data_dir: Path, **env: str) -> None:
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "BILLING_KAFKA": bootstrap,
            "BILLING_DATA_DIR": str(data_dir),
            "BILLING_LOG_EPOCH": "fault-tests",
            "BILLING_AUTO_TICK": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "worker.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "pipeline", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"billing {args} -> {result.returncode}: {result.stderr}\n{self.log()}"
        return result

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runtime = read_runtime(self.data_dir)
            if runtime is not None and self.proc is not None and runtime.pid == self.proc.pid:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready:\n{self.log()}")

    def log(self) -> str:
        path = self.data_dir / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def json_lines(self, *args: str) -> list[dict]:
        return [json.loads(x) for x in self.cli(*args, "--format", "json").stdout.splitlines() if x.strip()]


def assert_matches_oracle(worker: WorkerProcess, lines: list[str]) -> None:
    want = expected(lines)
    accounts = accounts_of(lines)
    assert bills_by_key(worker.json_lines("bills"), accounts) == want.bills
    assert_hour_totals_equal_bills(worker.json_lines)  # redelivered and replayed batches: no account-hour counted twice
    got_rejections = {}
    for r in worker.json_lines("rejected"):
        key = (r["account_id"], r["event_id"], r["reason"])
        got_rejections[key] = got_rejections.get(key, 0) + 1
    assert got_rejections == dict(want.listed_rejections())
    for account, summary in want.account_rows().items():
        got = worker.json_lines("account", account)[0]
        for name in ("status", "cash_balance", "debt", "free_tokens_left", "last_settled_hour"):
            assert got[name] == summary[name], (account, name)


def test_kill_9_at_random_points_then_exact(broker: str, tmp_path: Path) -> None:
    lines = generate(20000, seed=99)
    publish_lines([x.encode() for x in lines], broker, TOPIC, quiet=True)  # creates the topic (4 partitions)
    rng = random.Random(5)
    worker = WorkerProcess(broker, tmp_path / "data")
    for _ in range(3):
        worker.start()
        worker.wait_ready()
        time.sleep(rng.uniform(1.0, 4.0))  # somewhere in the group join, a batch, or a ClickHouse write
        worker.kill9()
    worker.start()
    try:
        worker.wait_ready()
        worker.cli("wait", "--timeout", "300")
        assert_matches_oracle(worker, lines)
    finally:
        worker.stop()


def test_replaying_processed_offsets_changes_nothing(broker: str, tmp_path: Path) -> None:
    lines = generate(5000, seed=100)
    publish_lines([x.encode() for x in lines], broker, TOPIC, quiet=True)
    worker = WorkerProcess(broker, tmp_path / "data").start()
    try:
        worker.wait_ready()
        worker.cli("wait", "--timeout", "300")
        bills = worker.json_lines("bills")
    finally:
        worker.stop()
    # a new consumer group reads the topic from offset 0: every record is delivered again
    worker = WorkerProcess(broker, tmp_path / "data", BILLING_APP_ID="billing-replayed").start()
    try:
        worker.wait_ready()
        worker.cli("wait", "--timeout", "300")
        assert worker.json_lines("bills") == bills
        assert_matches_oracle(worker, lines)
        health = json.loads(__import__("urllib.request").request.urlopen(read_runtime(worker.data_dir).api + "/healthz").read())
        assert health["stats"]["skipped_redeliveries"] >= len(lines)  # skipped before the fold, not re-applied
    finally:
        worker.stop()
