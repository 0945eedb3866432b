"""/healthz says when the worker's first batch arrived and its latest one was written: the bench
times one worker from them, leaving its startup and group join out."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from pipeline.demo.workload import generate
from pipeline.runtime import read_runtime
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def test_healthz_has_first_and_last_batch_times(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(generate(300, seed=9101)) + "\n")  # a seed of its own: its own accounts
    stack.publish(path)
    stack.wait()
    runtime = read_runtime(stack.data_dir)
    assert runtime is not None
    with urllib.request.urlopen(runtime.api + "/healthz", timeout=10) as response:
        health = json.loads(response.read())
    first, last = health["first_batch_at"], health["last_batch_at"]
    assert isinstance(first, float) and isinstance(last, float)
    assert first <= last  # arrival of the first batch, end of the latest write: an order, not a duration
