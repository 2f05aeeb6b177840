"""``ci.env(key, default=None)``: ``os.environ`` with ``.env`` support and JSON auto-parsing.

- On the first call in a process, ``.env`` in the working directory is loaded through
  python-dotenv when it is installed (``pip install 'cirron-sdk[dotenv]'``), without overriding
  variables that are already set. Without python-dotenv the step is skipped silently.
- A value whose first non-blank character is ``{`` or ``[`` is parsed as JSON; if that fails
  the raw string is returned. Scalars stay strings (``"123"``, ``"true"``): cast them yourself.
- Nothing is cached: a variable changed after a rolling restart, or by the program itself, is
  seen on the next call.

>>> import os
>>> os.environ["CIRRON_DOCTEST_LABELS"] = '["cat", "dog"]'
>>> env("CIRRON_DOCTEST_LABELS"), env("CIRRON_DOCTEST_MISSING", "fallback")
(['cat', 'dog'], 'fallback')
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["env"]

_dotenv_loaded = False


def env(key: str, default: Any = None) -> Any:
    """The environment variable ``key``, JSON-parsed when it looks like JSON, else ``default``."""
    _load_dotenv_once()
    value = os.environ.get(key)
    if value is None:
        return default
    return _maybe_json(value)


def _maybe_json(value: str) -> Any:
    stripped = value.lstrip()
    if not stripped.startswith(("{", "[")):
        return value
    import json

    try:
        return json.loads(stripped)
    except ValueError:
        return value


def _load_dotenv_once() -> None:
    global _dotenv_loaded
    if _dotenv_loaded:
        return
    _dotenv_loaded = True
    try:
        from dotenv import load_dotenv
    except ImportError:  # the [dotenv] extra is optional
        return
    # An explicit path: python-dotenv's default search starts from the caller's source file.
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
