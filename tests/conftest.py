"""Test isolation shared by the whole suite.

Every test runs in its own working directory with its own HOME and no ``CIRRON_*`` variables,
so nothing leaks between tests or from the developer's machine. After each test the default
cirron instance is shut down and every spool file the test produced is validated against the
published schema (``cirron/schema/spool-batch-v1.schema.json``).
"""

from __future__ import annotations

import importlib.util
import os

# scikit-learn's estimator checks include an array-API check on numpy that only runs when scipy
# was imported with this set; without it the check skips. Set before anything imports scipy.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.schema import spool_files, validate_files

# CIRRON_PURE_PYTHON: scripts/test runs the core modules once more on the pure-Python hot path.
_KEEP = {"CIRRON_TEST_KEEP", "CIRRON_PURE_PYTHON"}

# Test modules that import a framework at module level. Where the framework is absent (tox's
# `core` environment) they are not collected; where every framework is required (CI), a
# missing one stops the run at once.
_NEEDS = {
    "test_torch.py": ("torch",),
    "test_snapshots.py": ("torch",),
    "test_onnx.py": ("onnxruntime", "onnx"),
    "test_wrap.py": ("onnxruntime", "sklearn"),
    "test_sklearn.py": ("sklearn",),
    "test_sklearn_checks.py": ("sklearn",),
    "test_keras.py": ("keras", "tensorflow"),
    "test_keras_torch.py": ("keras", "torch"),
    "test_keras_jax.py": ("keras", "jax"),
}
_missing = {m for mods in _NEEDS.values() for m in mods if importlib.util.find_spec(m) is None}
if _missing and os.environ.get("CIRRON_REQUIRE_ALL_FRAMEWORKS") == "1":
    raise pytest.UsageError(
        f"CIRRON_REQUIRE_ALL_FRAMEWORKS=1 but {sorted(_missing)} are not installed; run "
        "scripts/test, which installs every extra."
    )
collect_ignore = [f for f, mods in _NEEDS.items() if _missing.intersection(mods)]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / ".git").mkdir()  # stop cirron.yaml's upward search at the test's own directory
    for key in list(os.environ):
        if (key.startswith("CIRRON_") and key not in _KEEP) or key in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
        ):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    from cirron.core.recorder import INTERNAL_ERRORS

    INTERNAL_ERRORS.clear()
    yield work
    import cirron

    cirron.shutdown()
    validate_files(spool_files(tmp_path))
    # cirron swallows its own faults in production; here every one is a failure.
    faults, INTERNAL_ERRORS[:] = list(INTERNAL_ERRORS), []
    assert not faults, f"cirron caught internal errors during the test: {faults}"


# -- CI: a test skipped because a framework is missing fails the run ---------------------------
# scripts/test sets CIRRON_REQUIRE_ALL_FRAMEWORKS=1. Only skips whose reason contains
# "[allowed-skip]" (e.g. CUDA-only tests on a machine without a GPU) are accepted.
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = (
            str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        )
        _skips.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CIRRON_REQUIRE_ALL_FRAMEWORKS") != "1":
        return
    bad = [(n, r) for n, r in _skips if "[allowed-skip]" not in r]
    if bad:
        lines = "\n".join(f"  {n}: {r}" for n, r in bad)
        print(f"\nCIRRON_REQUIRE_ALL_FRAMEWORKS=1 and {len(bad)} test(s) were skipped:\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
