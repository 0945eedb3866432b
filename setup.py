"""Compiles the per-record path with mypyc at install time (`pip install -e .`).

That is the pure billing core (parsing, validation, the fold) and the batch processor around it,
the per-record work of every worker and rebill.
mypyc turns these same Python sources into C extension modules, so the rules stay in one place
and in one language, and run about 1.5x faster (docs/performance.md). Everything else in
pyproject.toml; this file only adds the extension modules.

- BILLING_PURE_PYTHON=1 at install time skips the compilation.
- Without a C compiler the extensions are optional: the install goes on with the Python sources.
- pipeline/_compiled.json records a hash of each compiled source; pipeline/compiled.py loads the
  Python sources instead whenever one of them has changed since (an edit without a rebuild).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup

# The per-record path: the pure core (no Kafka, Faust or ClickHouse imports), and the batch edge's
# per-record loops and output formats. Not sink.py and statestore.py: tests replace their functions
# and constants, and compiled callers in one group would not see that.
COMPILED_MODULES = (
    "tuples", "timestamps", "windows", "state", "outputs", "catalog", "pricing", "quota", "keys", "settlement", "records",
    "validation", "fold", "framing", "outputs_json", "columns", "column_ranges", "processor",
)
HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "pipeline" / "_compiled.json"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def core_extensions() -> list:
    if os.environ.get("BILLING_PURE_PYTHON") == "1":
        MANIFEST.unlink(missing_ok=True)
        for leftover in (HERE / "pipeline").glob("*.so"):
            leftover.unlink()
        return []
    from mypyc.build import mypycify

    sources = [HERE / "pipeline" / f"{name}.py" for name in COMPILED_MODULES]
    # Third-party modules (orjson, fastjsonschema) are not installed yet while pip builds: typed as Any.
    options = ["--ignore-missing-imports"]
    extensions = mypycify(options + [str(p.relative_to(HERE)) for p in sources], opt_level="3", group_name="pipeline_core")
    for extension in extensions:
        extension.optional = True  # no compiler: install the Python sources alone
    MANIFEST.write_text(json.dumps({p.stem: source_hash(p) for p in sources}, indent=1) + "\n")
    return extensions


setup(ext_modules=core_extensions())
