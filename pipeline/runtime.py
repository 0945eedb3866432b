"""The data dir's record of a running `billing up`: where its broker and query API listen.

Other commands read it so that they find the embedded stack from another terminal, and so
that they query through the running worker instead of opening the engine it holds (DESIGN §6).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "runtime.json"


@dataclass(frozen=True)
class Runtime:
    pid: int
    kafka: str
    api: str  # base URL of the worker's HTTP API
    epoch: str
    started_at: str


def write_runtime(data_dir: Path, runtime: Runtime) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{FILE_NAME}.tmp"
    tmp.write_text(json.dumps(asdict(runtime), indent=2), encoding="utf-8")
    os.replace(tmp, data_dir / FILE_NAME)


def clear_runtime(data_dir: Path, pid: int) -> None:
    current = read_runtime(data_dir)
    if current is not None and current.pid == pid:
        (data_dir / FILE_NAME).unlink(missing_ok=True)


def read_runtime(data_dir: Path) -> Runtime | None:
    """The running stack, or None when none runs (a stale file from a crash is ignored)."""
    path = data_dir / FILE_NAME
    try:
        runtime = Runtime(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return runtime if _alive(runtime.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
