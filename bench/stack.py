"""One `billing up` in a temporary data directory, driven through the `billing` CLI."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import log, run, spawn, stop
from pipeline.runtime import read_runtime


class BillingStack:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.proc = None
        self.log_path = data_dir / "up.log"
        self.api = ""
        self.kafka = ""

    def start(self, timeout: float = 120.0) -> "BillingStack":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # cwd = the data dir: Faust writes its `<app id>-data` directory into the working directory
        self.proc = spawn([sys.executable, "-m", "pipeline", "up", "--data-dir", str(self.data_dir)],
                          log_path=self.log_path, cwd=self.data_dir, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"billing up exited with {self.proc.returncode}:\n{self.log_tail()}")
            runtime = read_runtime(self.data_dir)
            if runtime is not None and runtime.pid == self.proc.pid and self.health(runtime.api) is not None:
                self.api, self.kafka = runtime.api, runtime.kafka
                return self
            time.sleep(0.2)
        raise RuntimeError(f"billing up did not become ready in {timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it (it stops its broker); SIGKILL if it hangs."""
        code = stop(self.proc, signal.SIGINT, grace_s=60.0)
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def cli(self, *args: str, timeout: float = 1800.0, check: bool = True) -> Any:
        result = run([sys.executable, "-m", "pipeline", *args, "--data-dir", str(self.data_dir)], cwd=self.data_dir,
                     timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise RuntimeError(f"`billing {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-3000:]}\n"
                               f"--- billing up log (tail):\n{self.log_tail()}")
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


def log_stack_failure(stack: BillingStack) -> None:
    if stack.proc is not None and stack.proc.poll() is not None:
        log(f"billing up exited with {stack.proc.returncode}; its log ends:\n{stack.log_tail()}")
