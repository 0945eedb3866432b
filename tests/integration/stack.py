"""Drive the product only through its public interface: the `billing` CLI, as users do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from pipeline.runtime import read_runtime


@dataclass
class Stack:
    """A `billing up` running in the background on its own data dir."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "up.log"

    def start(self, timeout: float = 90.0) -> "Stack":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "up", "--data-dir", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"billing up exited with {self.proc.returncode}:\n{self.log()}")
            runtime = read_runtime(self.data_dir)
            if runtime is not None and runtime.pid == self.proc.pid and _healthy(runtime.api):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"billing up did not become ready in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as a user stops it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"billing up did not stop on SIGINT within {timeout}s:\n{self.log()}")
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def cli(
        self, *args: str, input_bytes: bytes | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", *args, "--data-dir", str(self.data_dir)],
            input=input_bytes.decode() if input_bytes is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"billing {' '.join(args)} exited {result.returncode}:\n{result.stderr}\n--- up log:\n{self.log()}")
        return result

    def publish(self, path: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """As the operator: the workloads' closing clock ticks are signed (`--control`)."""
        return self.cli("publish", "--control", str(path), check=check)

    def wait(self, timeout: float = 300) -> None:
        self.cli("wait", "--timeout", str(timeout), timeout=timeout + 30)

    def bills(self, *args: str) -> list[dict[str, Any]]:
        out = self.cli("bills", "--format", "json", *args).stdout
        return [json.loads(line) for line in out.split("\n") if line.strip()]

    def json_lines(self, *args: str) -> list[dict[str, Any]]:
        out = self.cli(*args, "--format", "json").stdout
        return [json.loads(line) for line in out.split("\n") if line.strip()]

    def kafka(self) -> str:
        runtime = read_runtime(self.data_dir)
        assert runtime is not None, "billing up is not running"
        return runtime.kafka

    def rejected(self, *args: str) -> list[dict[str, Any]]:
        out = self.cli("rejected", "--format", "json", *args).stdout
        return [json.loads(line) for line in out.split("\n") if line.strip()]


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


BILL_INTS = ("requests", "input_tokens", "output_tokens", "free_tokens", "billed_input_tokens", "billed_output_tokens", "quantity")


def bills_by_key(rows: list[dict[str, Any]], accounts: set[str] | None = None) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Bill rows keyed like the oracle's, amounts as Decimal; optionally only some accounts."""
    keyed = {}
    for row in rows:
        if accounts is not None and row["account_id"] not in accounts:
            continue
        key = (row["account_id"], row["hour"], row["api_key_id"], row["item"])
        assert key not in keyed, f"two current values for one bill line {key}"
        keyed[key] = {**{k: row[k] for k in BILL_INTS}, "amount": Decimal(row["amount"])}
    return keyed


# bill_hour_totals (through its view), as `billing sql` shows it: one row per account-hour
HOUR_TOTALS_SQL = (
    "SELECT account_id, hour, lines, calls, plugin_calls, input_tokens, output_tokens, free_tokens, billed_input_tokens, "
    "billed_output_tokens, plugin_units, amount FROM hourly_account_totals"
)
HOUR_TOTAL_INTS = (
    "lines",
    "calls",
    "plugin_calls",
    "input_tokens",
    "output_tokens",
    "free_tokens",
    "billed_input_tokens",
    "billed_output_tokens",
    "plugin_units",
)


def hour_totals_of_bills(bills: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """`billing bills` summed per account-hour, in the columns of hourly_account_totals."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for b in bills:
        t = totals.setdefault((b["account_id"], b["hour"]), {**{k: 0 for k in HOUR_TOTAL_INTS}, "amount": Decimal(0)})
        plugin = b["item"].startswith("plugin:")
        t["lines"] += 1
        t["plugin_calls" if plugin else "calls"] += b["requests"]
        t["plugin_units"] += b["quantity"] if plugin else 0
        for name in ("input_tokens", "output_tokens", "free_tokens", "billed_input_tokens", "billed_output_tokens"):
            t[name] += b[name]
        t["amount"] += Decimal(b["amount"])
    return totals


def assert_hour_totals_equal_bills(json_lines: Callable[..., list[dict[str, Any]]]) -> None:
    """The per account-hour totals the worker keeps (read by the console's overview and the
    hourly_account_totals view) equal `billing bills` summed per account-hour, row for row.
    `json_lines` runs a `billing` command with `--format json` (Stack's or a worker's)."""
    got = {
        (r["account_id"], r["hour"]): {**{k: r[k] for k in HOUR_TOTAL_INTS}, "amount": Decimal(r["amount"])}
        for r in json_lines("sql", HOUR_TOTALS_SQL, "--max-rows", "1000000")
    }
    _assert_same_totals(got, hour_totals_of_bills(json_lines("bills")))


def assert_hour_totals_exact(client: Any, accounts: set[str]) -> None:
    """The same, read straight from the engine (no `billing up`), for some accounts only."""
    from pipeline.core.timestamps import format_ts
    from pipeline.store import queries

    result = client.query(
        HOUR_TOTALS_SQL.replace("hour,", "toUnixTimestamp(hour) AS hour_s,", 1) + " WHERE account_id IN {a:Array(String)}",
        parameters={"a": sorted(accounts)},
    )
    got = {}
    for row in result.named_results():
        got[(row["account_id"], format_ts(row["hour_s"] * 1_000_000))] = {**{k: row[k] for k in HOUR_TOTAL_INTS}, "amount": row["amount"]}
    _assert_same_totals(got, hour_totals_of_bills([b for b in queries.bills(client) if b["account_id"] in accounts]))


def _assert_same_totals(got: dict[tuple[str, str], dict[str, Any]], want: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert want, "no bills to compare with"
    assert got.keys() == want.keys(), (
        f"account-hours only in the totals: {sorted(got.keys() - want.keys())[:5]}, "
        f"only in the bills: {sorted(want.keys() - got.keys())[:5]}"
    )
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"{len(wrong)} account-hours differ (totals, bills), e.g. {next(iter(wrong.items()))}"


def read_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[tuple[bytes, bytes]]:
    """Every message of a topic, in order per partition. Reads until idle: the embedded broker's
    end offsets cannot be trusted (DESIGN §7)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(idle_s * 1000),
    )
    try:
        return [(m.key, m.value) for m in consumer]
    finally:
        consumer.close()
