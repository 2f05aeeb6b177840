"""Validation of spool files against the published JSON schema (shipped in cirron/schema/)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "cirron" / "schema" / "spool-batch-v1.schema.json"
)
BATCH_NAME = re.compile(r"^\d{20}-[0-9a-f]{32}\.json$")


@cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def spool_files(root: Path) -> list[Path]:
    """Every batch file below ``root`` (any ``spool/`` directory at any depth)."""
    return sorted(p for p in root.rglob("*.json") if p.parent.name == "spool")


def validate_batch(batch: dict[str, Any], where: str = "<batch>") -> None:
    errors = sorted(validator().iter_errors(batch), key=lambda e: list(e.path))
    if errors:
        lines = [f"{where}: {'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]
        raise AssertionError("spool batch does not validate:\n" + "\n".join(lines))


def validate_files(paths: Iterable[Path]) -> int:
    """Validate each file (name and content); returns how many were checked."""
    n = 0
    for path in paths:
        assert BATCH_NAME.match(path.name), f"bad spool file name: {path}"
        batch = json.loads(path.read_text())
        validate_batch(batch, str(path))
        created, batch_id = path.stem.split("-")
        assert batch["batch_id"] == batch_id and batch["created_ns"] == int(created), path
        n += 1
    return n


def load_batches(root: Path) -> list[dict[str, Any]]:
    """Every batch below ``root``, validated, oldest first."""
    files = spool_files(root)
    validate_files(files)
    return [json.loads(p.read_text()) for p in sorted(files, key=lambda p: p.name)]
