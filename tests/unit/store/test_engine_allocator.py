"""The embedded engine's allocator setting (store/chclient.ENGINE_ALLOCATOR): set before the engine
loads, and an operator's own JE_MALLOC_CONF left alone. In a fresh process each time: the engine
reads it once, when it loads, and only one engine path can be open per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys
from pipeline.store.chclient import connect
connect("chdb://" + sys.argv[1]).query("SELECT 1")
print(os.environ.get("JE_MALLOC_CONF", ""))
"""


def _conf_after_connect(tmp_path: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "engine")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_engine_gets_the_shorter_decay_unless_the_operator_set_one(tmp_path: Path) -> None:
    from pipeline.store.chclient import ENGINE_ALLOCATOR

    env = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    assert _conf_after_connect(tmp_path / "a", env) == ENGINE_ALLOCATOR == "dirty_decay_ms:1000"
    assert _conf_after_connect(tmp_path / "b", {**env, "JE_MALLOC_CONF": "dirty_decay_ms:3000"}) == "dirty_decay_ms:3000"
