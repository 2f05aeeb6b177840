"""The local spool: one JSON batch per file, written atomically, capped in size.

Layout (``output_dir`` defaults to ``./.cirron``)::

    <output_dir>/spool/<created_ns:020d>-<batch_id>.json
    <output_dir>/snapshots/<epoch span id>/weights.safetensors, gradients.safetensors

A batch is written to ``<name>.json.tmp`` and renamed with :func:`os.replace`, so a reader (or a
process killed mid-write) never sees a partial ``.json``. Stale ``.json.tmp`` files are swept
at start. When the directory passes ``max_bytes`` the oldest batches are evicted and counted.
A vanished directory is recreated; a full disk or an unwritable directory is counted and
reported through the returned status, never raised.
"""

from __future__ import annotations

import errno
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BATCH_NAME", "Spool", "SpoolStats", "batch_file_name"]

BATCH_NAME = re.compile(r"^(\d{20})-([0-9a-f]{32})\.json$")


def batch_file_name(created_ns: int, batch_id: str) -> str:
    return f"{created_ns:020d}-{batch_id}.json"


@dataclass
class SpoolStats:
    files: int = 0
    bytes: int = 0
    evicted_files: int = 0
    write_failures: int = 0
    recreated_dirs: int = 0
    last_error: str | None = None


class Spool:
    """Writes batches under ``root/spool`` and blobs under ``root/snapshots``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.dir = root / "spool"
        self.snapshots_dir = root / "snapshots"
        self.max_bytes = max_bytes
        self.stats = SpoolStats()
        self._files: deque[tuple[str, int]] = deque()  # oldest first
        self._scanned = False

    def open(self) -> None:
        """Create the directory, sweep stale temp files, and learn what is already there."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            self._fail(exc)

    def _scan(self) -> None:
        entries: list[tuple[str, int]] = []
        with os.scandir(self.dir) as it:
            for e in it:
                if e.name.endswith(".json.tmp"):
                    if not _writer_alive(e.name):
                        try:
                            os.unlink(e.path)
                        except OSError:
                            pass
                elif BATCH_NAME.match(e.name):
                    try:
                        entries.append((e.name, e.stat().st_size))
                    except OSError:
                        pass
        entries.sort()
        self._files = deque(entries)
        self.stats.files = len(entries)
        self.stats.bytes = sum(size for _, size in entries)
        self._scanned = True

    def write(self, name: str, parts: Sequence[str]) -> Path | None:
        """Atomically write one batch file from its JSON text in ``parts``; returns its path,
        or None if it could not be written.

        The parts are joined and written in pieces of at most :data:`PIECE` characters: a
        batch is never one multi-megabyte string, whose repeated allocation fragments the C
        heap (measured: RSS grew ~110 MB per million marks when batches were single strings).
        The text is ASCII (every string went through an ASCII JSON encoder), so characters are
        bytes.
        """
        size = sum(map(len, parts))
        self._make_room(size)
        path = self.dir / name
        for attempt in (0, 1):
            try:
                self._write_atomic(path, _pieces(parts))
                break
            except FileNotFoundError as exc:  # directory deleted under us: recreate once
                if attempt:
                    self._fail(exc)
                    return None
                self._recreate()
            except OSError as exc:
                self._fail(exc)
                return None
        self._files.append((name, size))
        self.stats.files += 1
        self.stats.bytes += size
        return path

    def _write_atomic(self, path: Path, chunks: Iterable[bytes]) -> None:
        # The writer's pid in the temp name: a sweep at start (another rank sharing this
        # directory, a restarted run) removes only what a dead process left behind.
        pid = os.getpid()
        name = path.name
        tmp = path.with_name(
            f"{name[:-5]}.{pid}.json.tmp" if name.endswith(".json") else f"{name}.{pid}.tmp"
        )
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for data in chunks:
                    view = memoryview(data)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _recreate(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stats.recreated_dirs += 1
        self._files.clear()
        self.stats.files = 0
        self.stats.bytes = 0

    def _make_room(self, incoming: int) -> None:
        while self._files and self.stats.bytes + incoming > self.max_bytes:
            name, size = self._files.popleft()
            self.stats.files -= 1
            self.stats.bytes -= size
            try:
                os.unlink(self.dir / name)
                self.stats.evicted_files += 1
            except FileNotFoundError:
                pass  # already gone (uploaded and cleared by the CLI, or deleted by hand)
            except OSError as exc:
                self.stats.last_error = f"evicting {name}: {exc}"

    def _fail(self, exc: OSError) -> None:
        self.stats.write_failures += 1
        reason = {
            errno.ENOSPC: "disk full",
            errno.EFBIG: "file size limit reached",
            errno.EACCES: "permission denied",
            errno.EROFS: "read-only file system",
            errno.EDQUOT: "disk quota exceeded",
        }.get(exc.errno or 0, exc.strerror or "")
        self.stats.last_error = f"{reason}: {exc.filename or self.dir}"

    def write_blob(self, span_id: str, file_name: str, data: bytes) -> Path | None:
        """Write a snapshot blob atomically under ``snapshots/<span_id>/``."""
        d = self.snapshots_dir / span_id
        try:
            d.mkdir(parents=True, exist_ok=True)
            path = d / file_name
            self._write_atomic(path, (data,))
            return path
        except OSError as exc:
            self._fail(exc)
            return None


PIECE = 1 << 16


def _pieces(parts: Sequence[str]) -> Iterator[bytes]:
    """``parts`` joined into ASCII chunks of about :data:`PIECE` characters."""
    group: list[str] = []
    size = 0
    for part in parts:
        group.append(part)
        size += len(part)
        if size >= PIECE:
            yield "".join(group).encode("ascii")
            group, size = [], 0
    if group:
        yield "".join(group).encode("ascii")


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that is writing ``<name>.<pid>.json.tmp`` still runs."""
    parts = tmp_name.split(".")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False  # no pid in the name: left by an older writer
    if pid == os.getpid():
        return False  # ours, from before a fork or a crash of this very process: stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
