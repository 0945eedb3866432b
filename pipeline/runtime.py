"""The data dir's record of a running `billing up`: where its broker and query API listen.

Other commands read it so that they find the embedded stack from another terminal, and so
that they query through the running worker instead of opening the engine it holds (DESIGN §6).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "runtime.json"
CONTROL_KEY_FILE = "control.key"


@dataclass(frozen=True)
class Runtime:
    pid: int
    kafka: str
    api: str  # base URL of the worker's HTTP API
    epoch: str
    started_at: str
    operator_token: str = ""  # what the worker's API asks of a write (file readable by its owner only)


def write_runtime(data_dir: Path, runtime: Runtime) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{FILE_NAME}.tmp"
    _write_private(tmp, json.dumps(asdict(runtime), indent=2))
    os.replace(tmp, data_dir / FILE_NAME)


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read (it holds a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


class ControlKeyMissing(RuntimeError):
    """No control key: control records can be neither signed nor checked."""


def control_key(data_dir: Path, configured: str | None, create: bool = False) -> bytes:
    """The key that signs control records (control.py): BILLING_CONTROL_KEY, or the data dir's
    `control.key`, which `billing up` makes (32 random bytes, owner-only) and every tool on this
    machine then reads. Workers of one deployment must share it: set BILLING_CONTROL_KEY there."""
    if configured:  # its length is checked with the other settings (settings.load_settings)
        return configured.encode("utf-8")
    path = data_dir / CONTROL_KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip().encode("utf-8")
    except FileNotFoundError:
        if not create:
            raise ControlKeyMissing(
                f"no control key: set BILLING_CONTROL_KEY (the deployment's secret) or run `billing up` once with data dir "
                f"{data_dir}, which makes {path}"
            ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(path, secrets.token_hex(32))
    return path.read_text(encoding="utf-8").strip().encode("utf-8")


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
