"""The durable record of which spool batches the platform has acknowledged.

A batch counts as sent only after the server answered 2xx *and* its id was appended to
``<spool>/.sent``: one 32-hex batch id and a newline per line, written with a single
``O_APPEND`` ``write()`` and ``fsync()``-ed before the transport moves on. One short append is
atomic on a local POSIX file system, so a running profile and ``cirron spool flush`` may append to
the same ledger at once. Each append starts with a newline, so a line torn by a crash stays a
line of its own; it is not a valid id and is ignored, which at worst
sends that batch again; the server de-duplicates by ``X-Cirron-Batch-Id``, so delivery stays
at-least-once and never becomes at-most-once.

Readers of the spool ignore the file (its name is not a batch name). ``compact()`` drops the ids
of batch files that no longer exist (evicted at the spool cap, or cleared).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> ledger = Ledger(d)
>>> ledger.is_sent("0" * 32)
False
>>> ledger.mark_sent("0" * 32)
>>> Ledger(d).is_sent("0" * 32)
True
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["LEDGER_NAME", "Ledger"]

LEDGER_NAME = ".sent"
_ID = re.compile(r"^[0-9a-f]{32}$")


class Ledger:
    """Append-only set of sent batch ids kept in ``<spool_dir>/.sent``.

    Thread-safe. ``is_sent`` reads only the bytes appended since the last call (by this or any
    other process), so checking before every upload stays cheap.
    """

    def __init__(self, spool_dir: Path) -> None:
        self.path = Path(spool_dir) / LEDGER_NAME
        self._ids: set[str] = set()
        self._offset = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, {len(self._ids)} ids)"

    def after_fork_in_child(self) -> None:
        """A fresh lock: another thread of the parent may have held this one at ``fork()``."""
        self._lock = threading.Lock()

    def sent_ids(self) -> frozenset[str]:
        """Every id recorded so far, re-reading what other writers appended."""
        with self._lock:
            self._refresh()
            return frozenset(self._ids)

    def is_sent(self, batch_id: str) -> bool:
        """Whether ``batch_id`` has been acknowledged, here or by another process."""
        with self._lock:
            if batch_id in self._ids:
                return True
            self._refresh()
            return batch_id in self._ids

    def mark_sent(self, batch_id: str) -> None:
        """Durably record ``batch_id`` as acknowledged. Raises ``OSError`` if the disk refuses."""
        if not _ID.match(batch_id):
            raise ValueError(f"not a batch id: {batch_id!r}")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # The leading newline ends any line a crash left half-written before this one.
                os.write(fd, ("\n" + batch_id + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._ids.add(batch_id)

    def compact(self, live_ids: Iterable[str]) -> None:
        """Rewrite the ledger keeping only ids in ``live_ids`` (batches still in the spool).

        An id appended by another process during the rewrite may be lost; that batch is then
        sent once more and de-duplicated by the server.
        """
        with self._lock:
            self._refresh()
            keep = sorted(self._ids.intersection(live_ids))
            tmp = self.path.with_name(LEDGER_NAME + ".tmp")
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write("".join(i + "\n" for i in keep))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._ids = set(keep)
            self._offset = self.path.stat().st_size

    def _refresh(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self._ids.clear()
            self._offset = 0
            return
        if size < self._offset:  # compacted or cleared by someone else: read it all again
            self._ids.clear()
            self._offset = 0
        if size == self._offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        end = data.rfind(b"\n") + 1  # leave a half-written last line for the next read
        for line in data[:end].decode("ascii", "replace").splitlines():
            if _ID.match(line):
                self._ids.add(line)
        self._offset += end
