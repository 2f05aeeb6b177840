"""Finding and reading spool batch files, tolerating what a real spool directory holds.

>>> list(iter_batches(Path("/nonexistent")))
[]
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["BATCH_NAME", "SUPPORTED_SCHEMA_VERSIONS", "iter_batches", "spool_dir_of"]

SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
BATCH_NAME = re.compile(r"^\d{20}-[0-9a-f]{32}\.json$")

Record = dict[str, Any]


# -- files -------------------------------------------------------------------------------------


def spool_dir_of(path: Path) -> Path:
    """The spool directory for ``path``: the ``.cirron`` root (``path/spool``) or the spool itself.

    >>> spool_dir_of(Path("/nonexistent/.cirron"))
    PosixPath('/nonexistent/.cirron/spool')
    """
    if path.name != "spool" and (path / "spool").is_dir():
        return path / "spool"
    if path.name == "spool" or any(BATCH_NAME.match(p.name) for p in _listdir(path)):
        return path
    return path / "spool"


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def iter_batches(
    spool_dir: Path, *, on_warning: Callable[[str], None] | None = None
) -> Iterator[tuple[Path, Record]]:
    """Yield ``(path, batch)`` for every batch file in ``spool_dir``, oldest first.

    Only names ``<created_ns:020d>-<batch_id>.json`` count; anything else (``.json.tmp``,
    the upload ledger) is ignored. A corrupt, truncated or non-object file and an unknown
    ``schema_version`` are reported through ``on_warning`` (naming the file) and skipped; a file
    that vanishes between listing and reading (evicted at the cap) is skipped silently.

    >>> list(iter_batches(Path("/nonexistent")))
    []
    """
    warn = on_warning or (lambda _msg: None)
    names = sorted(p.name for p in _listdir(Path(spool_dir)) if BATCH_NAME.match(p.name))
    for name in names:
        path = Path(spool_dir) / name
        batch = _read_batch(path, warn)
        if batch is not None:
            yield path, batch


def _read_batch(path: Path, warn: Callable[[str], None]) -> Record | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        warn(f"{path}: unreadable ({exc}); skipped")
        return None
    try:
        batch = json.loads(text)
    except ValueError as exc:
        warn(f"{path}: not valid JSON, corrupt or truncated ({exc}); skipped")
        return None
    if not isinstance(batch, dict):
        warn(f"{path}: not a spool batch (a JSON {type(batch).__name__}, not an object); skipped")
        return None
    version = batch.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        warn(
            f"{path}: schema_version {version!r} is not supported by this cirron "
            f"(reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}); skipped. Upgrade cirron-sdk to read it."
        )
        return None
    return batch
