"""One formatter and one line length for the whole tree (pyproject.toml, [tool.ruff]): a change
that is not formatted, or that ruff's lint finds fault with, fails here with the files named.
To mend: `ruff format . && ruff check --fix .` in the venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_tree_is_formatted_by_ruff() -> None:
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, f"run `ruff format .`:\n{done.stdout}{done.stderr}"


def test_the_tree_passes_ruff_check() -> None:
    done = ruff("check", "--output-format", "concise", ".")
    assert done.returncode == 0, f"run `ruff check --fix .`:\n{done.stdout}{done.stderr}"
