"""Test isolation shared by the whole suite.

Every test runs in its own working directory with its own HOME and no ``CIRRON_*`` variables,
so nothing leaks between tests or from the developer's machine. After each test the default
cirron instance is shut down and every spool file the test produced is validated against the
published schema (``cirron/schema/spool-batch-v1.schema.json``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.schema import spool_files, validate_files

_KEEP = {"CIRRON_TEST_KEEP"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / ".git").mkdir()  # stop cirron.yaml's upward search at the test's own directory
    for key in list(os.environ):
        if (key.startswith("CIRRON_") and key not in _KEEP) or key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    yield work
    import cirron

    cirron.shutdown()
    validate_files(spool_files(tmp_path))
