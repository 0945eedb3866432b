"""The bench's stack: an embedded Tansu broker owned by the bench process, and one
`billing worker` process on it (embedded ClickHouse in the data dir), driven through the
`billing` CLI.

The worker is a process of its own, not `billing up`, so that the bench can publish a workload
into the input topic before any worker runs and then time one worker alone draining it (d);
and so that the worker can be started under py-spy, and restarted, without losing the broker's
topics and group offsets (memory storage forgets them when the broker stops).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import log, run, spawn, stop, thread_cpu
from pipeline.runtime import read_runtime


@dataclass(frozen=True)
class WorkerStart:
    """When a worker process was spawned and when its query API answered (time.time())."""

    spawned_at: float
    api_ready_at: float
    profile: Path | None


class HealthSampler:
    """The worker's processed-record count from /healthz every `every_s` (wall clock, on a thread):
    how fast it went while a phase ran, without asking ClickHouse anything."""

    def __init__(self, stack: "BillingStack", every_s: float = 0.25) -> None:
        self.stack = stack
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self.rss: list[tuple[float, int]] = []  # (time, the worker's resident set in bytes)
        self.cpu: list[tuple[float, float, float]] = []  # (time, CPU seconds of the worker's Python threads, of its engine's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-healthz", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            health = self.stack.health() if self.stack.api else None
            if health is not None:
                self.samples.append((time.time(), int(health.get("stats", {}).get("records", 0))))
            rss = self.stack.worker_rss()
            if rss is not None:
                self.rss.append((time.time(), rss))
            cpu = thread_cpu(self.stack.worker_pid) if self.stack.worker_pid is not None else None
            if cpu is not None:
                self.cpu.append((time.time(), *cpu))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "HealthSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def cores_between(self, start: float, end: float) -> dict[str, float] | None:
        """The worker's average cores busy from `start` to `end` (wall clock): its Python threads,
        its engine's, and both; None without two samples in between."""
        inside = [s for s in self.cpu if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (t0, py0, en0), (t1, py1, en1) = inside[0], inside[-1]
        python, engine = (py1 - py0) / (t1 - t0), (en1 - en0) / (t1 - t0)
        return {"python_threads": round(python, 2), "engine_threads": round(engine, 2), "all": round(python + engine, 2)}

    def first_reaching(self, records: int) -> float | None:
        """Wall time of the first sample whose count is at least `records`."""
        return next((t for t, r in self.samples if r >= records), None)


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (a venv's bin is often not on PATH), else on PATH."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


class BillingStack:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = dict(env)
        self.broker: Any = None  # pipeline.ingest.broker.EmbeddedBroker
        self.kafka = ""
        self.epoch = ""
        self.proc: subprocess.Popen[bytes] | None = None  # the worker, or py-spy running it
        self.worker_pid: int | None = None  # the worker's own pid (differs from proc.pid under py-spy)
        self.api = ""
        self.log_path = data_dir / "worker.log"

    # -- broker ------------------------------------------------------------------------------
    def start_broker(self) -> str:
        """Start Tansu from this process (main thread: it dies with it) and create the topics.
        One broker life is one log epoch, as `billing up` names it; every worker started on this
        broker gets the same epoch, so that a restarted worker resumes its positions."""
        from pipeline.cli.commands import new_epoch
        from pipeline.ingest.broker import EmbeddedBroker
        from pipeline.ingest.topics import ensure_all
        from pipeline.settings import load_settings

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(self.data_dir / "broker.log")
        self.kafka = self.broker.start()
        self.epoch = new_epoch()
        settings = load_settings(self.kafka, None, str(self.data_dir)).with_(log_epoch=self.epoch)
        ensure_all(settings, self.kafka)
        # every child (worker and CLI) talks to this broker; the worker names its log epoch
        self.env.update({"BILLING_KAFKA": self.kafka, "BILLING_LOG_EPOCH": self.epoch})
        return self.kafka

    # -- worker ------------------------------------------------------------------------------
    def start_worker(self, profile_to: Path | None = None, timeout: float = 120.0) -> WorkerStart:
        """Spawn `billing worker` (under py-spy when `profile_to` is a raw output file) and wait
        until its query API answers and runtime.json names it: only then may the CLI read, since
        without runtime.json it would open the embedded engine itself."""
        if self.alive():
            raise RuntimeError("a worker already runs")
        argv = [sys.executable, "-m", "pipeline", "worker", "--kafka", self.kafka, "--data-dir", str(self.data_dir)]
        if profile_to is not None:
            argv = self._under_py_spy(argv, profile_to)
        spawned_at = time.time()
        # cwd = the data dir: Faust writes its `<app id>-data` directory into the working directory
        self.proc = spawn(argv, log_path=self.log_path, cwd=self.data_dir, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"billing worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            runtime = read_runtime(self.data_dir)
            if runtime is not None and self._ours(runtime.pid) and self.health(runtime.api) is not None:
                self.api, self.worker_pid = runtime.api, runtime.pid
                return WorkerStart(spawned_at, time.time(), profile_to)
            time.sleep(0.05)
        raise RuntimeError(f"billing worker did not become ready in {timeout:g}s:\n{self.log_tail()}")

    def _under_py_spy(self, argv: list[str], out: Path) -> list[str]:
        py_spy = find_py_spy()
        if py_spy is None:
            raise RuntimeError("py-spy not found")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        return [py_spy, "record", "-r", "200", "-f", "raw", "-o", str(out), "--subprocesses", "--", *argv]

    def _ours(self, pid: int) -> bool:
        """The runtime file names a process of the group we spawned (the worker, or py-spy's child)."""
        assert self.proc is not None
        try:
            return pid == self.proc.pid or os.getpgid(pid) == self.proc.pid
        except OSError:
            return False

    def stop_worker(self, grace_s: float = 60.0) -> int | None:
        """Ctrl-C, as a user stops it; SIGKILL if it hangs. Under py-spy the SIGINT goes to the
        worker alone: py-spy then sees it exit and writes its profile (a Ctrl-C to py-spy would
        kill the worker instead of letting it commit and leave its group)."""
        proc, self.proc = self.proc, None
        worker_pid, self.worker_pid, self.api = self.worker_pid, None, ""
        if proc is None:
            return None
        if worker_pid is not None and worker_pid != proc.pid and proc.poll() is None:
            try:
                os.kill(worker_pid, signal.SIGINT)
                proc.wait(grace_s)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                log(f"the worker (pid {worker_pid}) did not stop within {grace_s:g}s under py-spy")
        return stop(proc, signal.SIGINT, grace_s=grace_s)

    def stop(self) -> None:
        """The worker first (it commits and leaves its group through the broker), then the broker."""
        try:
            code = self.stop_worker()
            if code not in (0, None, -signal.SIGINT, 130):
                log(f"billing worker exited with {code}")
        finally:
            if self.broker is not None:
                self.broker.stop()
                self.broker = None

    def worker_rss(self) -> int | None:
        """The worker process's resident set size in bytes (VmRSS), None when no worker runs."""
        if self.worker_pid is None:
            return None
        try:
            with open(f"/proc/{self.worker_pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # -- the product's interfaces -----------------------------------------------------------
    def cli(self, *args: str, timeout: float = 1800.0, check: bool = True) -> Any:
        result = run(
            [sys.executable, "-m", "pipeline", *args, "--data-dir", str(self.data_dir)], cwd=self.data_dir, timeout=timeout, env=self.env
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"`billing {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-3000:]}\n"
                f"--- billing worker log (tail):\n{self.log_tail()}"
            )
        return result

    def health(self, api: str | None = None) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{api or self.api}/healthz", timeout=5) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def bills(self, account: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.api}/api/bills?account={account}", timeout=30) as response:
            return json.loads(response.read())
