"""Running small Python programs in real subprocesses (for exit, signal and crash tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    # Children run the same hot path (C or pure Python) as the test process.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CIRRON_") or k == "CIRRON_PURE_PYTHON"
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def write_script(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


def run_py(
    code: str, cwd: Path, *, timeout: float = 60, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    script = write_script(cwd / "prog.py", code)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def spans_by_name(batches: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Final records (provisional ones superseded) grouped by span name."""
    final: dict[str, dict[str, Any]] = {}
    for b in batches:
        for s in b["spans"]:
            prev = final.get(s["id"])
            if prev is None or prev["attrs"].get("open") or not s["attrs"].get("open"):
                final[s["id"]] = s
    out: dict[str, list[dict[str, Any]]] = {}
    for s in final.values():
        out.setdefault(s["name"], []).append(s)
    for v in out.values():
        v.sort(key=lambda s: (s["start_ns"], s["index"] if s["index"] is not None else -1))
    return out


def all_marks(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for b in batches for m in b["marks"]]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
