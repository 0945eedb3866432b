"""Restart on the same data dir: the embedded broker forgets everything, the bills must not."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.demo.workload import generate, write_jsonl
from tests.integration.stack import Stack
from tests.integration.test_pipeline import assert_bills_match

pytestmark = pytest.mark.integration


def test_restart_mid_workload_equals_one_run(fresh_dir: Path, tmp_path: Path) -> None:
    lines = generate(5000, seed=23)
    first, rest = lines[:2600], lines[2600:]
    write_jsonl(tmp_path / "first.jsonl", first)
    write_jsonl(tmp_path / "rest.jsonl", rest)
    write_jsonl(tmp_path / "all.jsonl", lines)

    stack = Stack(fresh_dir).start()
    try:
        stack.publish(tmp_path / "first.jsonl")
        stack.wait()
    finally:
        assert stack.stop() == 0

    stack = Stack(fresh_dir).start()  # a new, empty broker; ClickHouse keeps the data
    try:
        stack.publish(tmp_path / "rest.jsonl")
        stack.wait()
        assert_bills_match(stack, lines)
        # a user unsure what got in re-publishes everything: duplicates only, nothing counted twice
        stack.publish(tmp_path / "all.jsonl")
        stack.wait()
        assert_bills_match(stack, lines)
    finally:
        stack.stop()
