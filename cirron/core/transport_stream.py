"""The ``event_stream`` transport: one JSON line per sealed batch on stdout, for the Cirron kernel.

Also home of what every transport shares: the health keys and the daemon-thread starter.

>>> import io
>>> out = io.StringIO()
>>> t = EventStreamTransport(stdout=out, sdk_version="0.1.0")
>>> t.start()
>>> t.on_batch(None, {"schema_version": 1, "batch_id": "0" * 32, "spans": []})
>>> t.close(1.0)
>>> out.getvalue().startswith('{"__cirron_event__":"trace_batch"')
True
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["EventStreamTransport", "base_health", "start_daemon"]

logger = logging.getLogger("cirron")

_STDOUT_LOCK = threading.Lock()  # shared by every event-stream transport in the process


def _reset_stdout_lock() -> None:  # a writer thread may have held it when the process forked
    global _STDOUT_LOCK
    _STDOUT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_stdout_lock)


def base_health(name: str) -> dict[str, Any]:
    """The health keys every transport reports, zeroed."""
    return {
        "transport": name,
        "batches_sent": 0,
        "batches_retried": 0,
        "batches_failed": 0,
        "batches_pending": 0,
        "last_http_status": None,
        "last_error": None,
        "paused": False,
    }


def start_daemon(
    target: Callable[[], None], name: str, health: dict[str, Any]
) -> threading.Thread | None:
    """Start a daemon thread; on failure note it in ``health`` and return ``None``."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:  # interpreter shutting down, or no more threads
        health["last_error"] = f"could not start {name}: {exc}"
        logger.warning("cirron: could not start the %s thread: %s", name, exc)
        return None
    return thread


class EventStreamTransport:
    """One JSON line per sealed batch (and per snapshot blob) on stdout, for the Cirron kernel.

    Lines are written by a writer thread, each with a single ``write()`` under a process-wide
    lock and followed by ``flush()``. When stdout is a regular file (``python train.py > log``)
    the writer reads the file's last byte (through ``/proc/self/fd`` when stdout is write-only)
    and starts with ``\\n`` if the user left a line unterminated; on a pipe or terminal that
    cannot be known, and the line is written as is.
    """

    name = "event_stream"

    def __init__(self, *, stdout: TextIO | None, sdk_version: str) -> None:
        self._stdout = stdout
        self._sdk_version = sdk_version
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._health = base_health(self.name)

    def __repr__(self) -> str:
        return f"EventStreamTransport(pending={len(self._queue)})"

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is None:
            self._thread = start_daemon(self._run, "cirron-event-stream", self._health)

    def on_batch(self, path: Path | None, batch: dict[str, Any]) -> None:
        """Queue a ``trace_batch`` event."""
        self._put("trace_batch", batch)

    def on_blob(self, path: Path, span_id: str) -> None:
        """Queue a ``snapshot_blob`` event naming the file."""
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        payload = {"span_id": span_id, "file": path.name, "path": str(path), "bytes": size}
        self._put("snapshot_blob", payload)

    def close(self, timeout: float) -> None:
        """Write what is queued within ``timeout`` seconds, then stop."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))

    def health(self) -> dict[str, Any]:
        """Counters; ``batches_pending`` counts events not yet written."""
        return dict(self._health, batches_pending=len(self._queue))

    def after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock and queue; call ``start()`` again to write."""
        self._wake = threading.Condition()
        self._queue = deque()
        self._thread, self._closing = None, False

    def _put(self, event: str, payload: dict[str, Any]) -> None:
        with self._wake:
            if self._closing:
                return
            self._queue.append((event, payload))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                event, payload = self._queue.popleft()
            self._write(event, payload)

    def _write(self, event: str, payload: dict[str, Any]) -> None:
        record = {
            "__cirron_event__": event,
            "schema_version": 1,
            "sdk_version": self._sdk_version,
            "payload": payload,
        }
        try:
            line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
            stream = self._stdout or sys.stdout
            with _STDOUT_LOCK:
                if _ends_mid_line(stream):
                    line = "\n" + line
                stream.write(line)
                stream.flush()
        except (OSError, ValueError, TypeError) as exc:
            self._health["batches_failed"] += 1
            self._health["last_error"] = f"{type(exc).__name__}: {exc}"
            return
        if event == "trace_batch":
            self._health["batches_sent"] += 1


def _ends_mid_line(stream: TextIO) -> bool:
    """True only when ``stream`` is a regular file whose last byte is not a newline."""
    try:
        stream.flush()
        fd = stream.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return False
        return _last_byte(fd, st.st_size) not in (b"\n", b"")
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


def _last_byte(fd: int, size: int) -> bytes:
    try:
        return os.pread(fd, 1, size - 1)
    except OSError:  # opened write-only, as a shell's `> log` does: read it through /proc
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            return os.pread(reader, 1, size - 1)
        finally:
            os.close(reader)
