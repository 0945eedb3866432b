"""Which build of the pure core runs: the one mypyc compiled at install time, or its sources.

`pip install -e .` compiles the core modules (setup.py) into extension modules beside their
sources. Python imports an extension module before a .py file of the same name, so after an edit
without a rebuild it would go on running the old rules. At package import, before any core
module is loaded, each source is compared with the hash recorded when it was compiled; if one
differs, a build is missing, or BILLING_PURE_PYTHON=1, every core module is loaded from its
source (all or none: compiled modules call each other directly).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_compiled.json"
EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
REBUILD = "pip install -e . (in the repository)"


@dataclass(frozen=True)
class CoreBuild:
    compiled: bool
    why: str  # shown by `billing up`, /healthz and the bench
    warn: bool = False  # a build was made but cannot be used: say so on every start

    @property
    def label(self) -> str:
        return "compiled (mypyc)" if self.compiled else f"Python sources ({self.why})"


def inspect(package_dir: Path, manifest: dict[str, str] | None, pure_requested: bool) -> tuple[CoreBuild, list[str]]:
    """The build to run, and the core modules whose compiled form must not be used."""
    if manifest is None:  # extension modules without a record of their sources cannot be trusted
        leftovers = sorted(_name(package_dir, p) for p in package_dir.glob(f"**/*{EXTENSION_SUFFIX}"))
        return CoreBuild(False, "not compiled"), leftovers
    names = sorted(manifest)
    if pure_requested:
        return CoreBuild(False, "BILLING_PURE_PYTHON=1"), names
    missing = [n for n in names if not _file(package_dir, n, EXTENSION_SUFFIX).exists()]
    if missing:
        return CoreBuild(False, f"not compiled: {', '.join(missing)}", warn=True), names
    changed = [n for n in names if _hash(_file(package_dir, n, ".py")) != manifest[n]]
    if changed:
        files = ", ".join(f"pipeline/{n.replace('.', '/')}.py" for n in changed)
        return CoreBuild(False, f"{files} changed since the core was compiled; rebuild with {REBUILD}", warn=True), names
    return CoreBuild(True, "sources match the build"), []


def _file(package_dir: Path, name: str, suffix: str) -> Path:
    """pipeline/core/fold.py for `core.fold`: the manifest names modules relative to the package."""
    return package_dir.joinpath(*name.split(".")).with_name(name.split(".")[-1] + suffix)


def _name(package_dir: Path, extension: Path) -> str:
    return ".".join(extension.relative_to(package_dir).parts)[: -len(EXTENSION_SUFFIX)]


def _hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


class SourceFinder:
    """Finds the listed core modules as their .py files, ahead of the extension modules."""

    def __init__(self, package: str, package_dir: Path, names: Sequence[str]) -> None:
        self.modules = {f"{package}.{name}": _file(package_dir, name, ".py") for name in names}

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.modules.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def _read_manifest() -> dict[str, str] | None:
    try:
        data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def choose() -> CoreBuild:
    """Called once from pipeline/__init__.py; warns on stderr when a build is stale."""
    build, use_sources = inspect(PACKAGE_DIR, _read_manifest(), os.environ.get("BILLING_PURE_PYTHON") == "1")
    if use_sources:
        sys.meta_path.insert(0, SourceFinder(__package__ or "pipeline", PACKAGE_DIR, use_sources))
        if build.warn:
            print(f"billing: running the Python sources of the core, slower: {build.why}", file=sys.stderr)
    return build
