"""The compiled core (setup.py, pipeline/compiled.py): used only while it matches its sources,
and it bills exactly as the sources do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import CORE_BUILD
from pipeline.compiled import EXTENSION_SUFFIX, MANIFEST, SourceFinder, inspect

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("fold", "state")


def _package(tmp_path: Path, compiled: tuple[str, ...] = NAMES) -> tuple[Path, dict[str, str]]:
    """A package dir with sources, extension files (empty stand-ins) and their manifest."""
    package = tmp_path / "pkg"
    package.mkdir()
    manifest = {}
    for name in NAMES:
        (package / f"{name}.py").write_text(f"# {name}\n")
        manifest[name] = _sha(package / f"{name}.py")
        if name in compiled:
            (package / f"{name}{EXTENSION_SUFFIX}").write_bytes(b"")
    return package, manifest


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_build_that_matches_its_sources_is_used(tmp_path):
    package, manifest = _package(tmp_path)
    build, use_sources = inspect(package, manifest, pure_requested=False)
    assert build.compiled and use_sources == []
    assert build.label == "compiled (mypyc)"


def test_an_edited_source_sends_every_core_module_to_its_source(tmp_path):
    package, manifest = _package(tmp_path)
    (package / "state.py").write_text("# state, edited\n")
    build, use_sources = inspect(package, manifest, pure_requested=False)
    assert not build.compiled
    assert use_sources == ["fold", "state"]  # all or none: compiled modules call each other directly
    assert "pipeline/state.py changed" in build.why and "pip install -e ." in build.why
    assert build.warn


def test_a_missing_extension_means_the_sources(tmp_path):
    package, manifest = _package(tmp_path, compiled=("fold",))
    build, use_sources = inspect(package, manifest, pure_requested=False)
    assert not build.compiled and use_sources == ["fold", "state"]
    assert build.why == "not compiled: state" and build.warn


def test_pure_python_on_request(tmp_path):
    package, manifest = _package(tmp_path)
    build, use_sources = inspect(package, manifest, pure_requested=True)
    assert not build.compiled and use_sources == ["fold", "state"]
    assert build.label == "Python sources (BILLING_PURE_PYTHON=1)" and not build.warn  # asked for: no warning


def test_extensions_without_a_manifest_are_not_trusted(tmp_path):
    package, _ = _package(tmp_path)
    build, use_sources = inspect(package, None, pure_requested=False)
    assert not build.compiled and use_sources == ["fold", "state"]


def test_no_build_at_all(tmp_path):
    package, _ = _package(tmp_path, compiled=())
    build, use_sources = inspect(package, None, pure_requested=False)
    assert not build.compiled and use_sources == []


def test_the_source_finder_finds_only_the_listed_modules(tmp_path):
    package, _ = _package(tmp_path)
    finder = SourceFinder("pkg", package, ["fold"])
    spec = finder.find_spec("pkg.fold")
    assert spec is not None and spec.origin == str(package / "fold.py")
    assert finder.find_spec("pkg.state") is None and finder.find_spec("fold") is None


def test_an_install_that_tried_to_compile_built_every_module():
    """pip install -e . compiles the core (setup.py); a compiler failure leaves the install on the
    Python sources, which works but is slower: say so here rather than in a benchmark."""
    if not MANIFEST.exists() or os.environ.get("BILLING_PURE_PYTHON") == "1":
        pytest.skip("BILLING_PURE_PYTHON=1: the sources on purpose")
    if "changed since" in CORE_BUILD.why:
        pytest.skip(f"sources edited after the build: {CORE_BUILD.why}")
    assert CORE_BUILD.compiled, f"the core did not compile: {CORE_BUILD.why}"


def _copy_tree(tmp_path: Path) -> Path:
    """The package, its extension modules and schemas, as a checkout would hold them."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    for group in ROOT.glob(f"*__mypyc*{EXTENSION_SUFFIX}"):
        shutil.copy2(group, tmp_path / group.name)
    return tmp_path


def _where(tree: Path) -> tuple[dict[str, str], str]:
    code = "import json, pipeline, pipeline.core.fold, pipeline.core.state; print(json.dumps([pipeline.core.fold.__file__, pipeline.core.state.__file__]))"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("BILLING_PURE_PYTHON", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    fold, state = json.loads(done.stdout)
    return {"fold": fold, "state": state}, done.stderr


@pytest.mark.skipif(not CORE_BUILD.compiled, reason="the core is not compiled here")
def test_a_stale_build_is_not_run_after_a_source_edit(tmp_path):
    tree = _copy_tree(tmp_path)
    files, _ = _where(tree)
    assert all(f.endswith(EXTENSION_SUFFIX) for f in files.values()), files
    with open(tree / "pipeline" / "core" / "fold.py", "a", encoding="utf-8") as source:
        source.write("\n# an edit without a rebuild\n")
    files, stderr = _where(tree)
    assert all(f.endswith(".py") for f in files.values()), files
    assert "pipeline/core/fold.py changed since the core was compiled" in stderr


@pytest.mark.skipif(not CORE_BUILD.compiled, reason="the core is not compiled here: the sources are what runs")
def test_the_python_sources_pass_the_unit_tests_too():
    """The sources are the fallback (no compiler, or an edit): they must bill exactly as the build.
    Runs this directory again on the sources; the oracle and property tests are in it."""
    env = {**os.environ, "BILLING_PURE_PYTHON": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).parent),
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "--deselect",
            f"{__file__}::test_the_python_sources_pass_the_unit_tests_too",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
