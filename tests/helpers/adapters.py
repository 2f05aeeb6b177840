"""Narrowing cirron's framework registry for one test module."""

from __future__ import annotations

import pytest


def keep_only(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Autodetect sees only the adapters ``names`` for the rest of the test: other frameworks a
    neighbouring test imported (torch, mostly) are tested by their owners."""
    import cirron.integrations as registry

    kept = {k: v for k, v in registry.FRAMEWORKS.items() if k in names}
    monkeypatch.setattr(registry, "FRAMEWORKS", kept)
