"""The background flusher: seals buffered records into batches and hands them to the sinks.

One daemon thread per profiling session wakes every ``flush_interval`` seconds (or early, when
a thread's mark buffer passes a threshold), drains the recorder, writes one spool file per
batch, and notifies the transport. A synchronous :meth:`Flusher.flush` does the same on the
caller's thread. The training thread never waits on this lock: only flushes take it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns, time_ns
from typing import Any, Protocol

from cirron.core.recorder import Recorder
from cirron.core.seal import MAX_RECORDS_PER_BATCH, Sealer
from cirron.core.spool import Spool, batch_file_name

__all__ = ["BatchSink", "FlushStats", "Flusher"]

log = logging.getLogger("cirron")

MEMORY_BATCHES = 256  # batches ci.trace() can read back when the spool sink is off


class BatchSink(Protocol):
    """Where sealed batches go besides the spool (the transport implements this)."""

    def on_batch(self, path: Path | None, batch: dict[str, Any]) -> None: ...


@dataclass
class FlushStats:
    flushes: int = 0
    batches: int = 0
    last_latency_ns: int = 0
    max_latency_ns: int = 0
    last_flush_ns: int = 0


class Flusher:
    """Owns the flusher thread of one profiling session."""

    def __init__(
        self,
        rec: Recorder,
        sealer: Sealer,
        *,
        interval: float,
        spool: Spool | None,
        outputs: tuple[str, ...],
        sink: BatchSink | None,
        on_error: Callable[[str, BaseException], None],
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        self.rec = rec
        self.sealer = sealer
        self.interval = interval
        self.spool = spool
        self.outputs = outputs
        self.sink = sink
        self.on_error = on_error
        self.before_flush = before_flush
        self.stats = FlushStats()
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        # Without a spool, ci.trace() reads the session back from the last sealed batches.
        self.memory: deque[dict[str, Any]] | None = (
            None if "spool" in outputs else deque(maxlen=MEMORY_BATCHES)
        )

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cirron-flusher", daemon=True)
        self._thread.start()
        self.rec.wake = self._event.set

    def after_fork_in_child(self) -> None:
        """The parent's thread does not exist here: new lock, new event, new thread."""
        self._lock = threading.Lock()
        self._event = threading.Event()
        self.sealer.reset_after_fork()
        self._thread = None
        self.rec.wake = self._event.set

    def ensure_thread(self) -> None:
        if not self._stop and (self._thread is None or not self._thread.is_alive()):
            self.start()

    def _run(self) -> None:
        deaths = 0
        while not self._stop:
            self._event.wait(self.interval)
            self._event.clear()
            if self._stop:
                break
            try:
                self.flush()
            except Exception as exc:  # supervised: never let the thread die silently
                deaths += 1
                self.on_error("flusher", exc)

    def flush(self, timeout: float | None = None) -> bool:
        """Seal and write everything buffered now. Returns False if the lock was not had."""
        if self.before_flush is not None and not self._stop:
            self.before_flush()  # e.g. latency percentiles as summary marks, sealed right now
        acquired = self._lock.acquire(timeout=-1 if timeout is None else timeout)
        if not acquired:
            return False
        try:
            self._flush_locked()
        finally:
            self._lock.release()
        return True

    def _flush_locked(self) -> None:
        t0 = perf_counter_ns()
        spans, marks, snaps, closed = self.sealer.drain()
        provisional = 0
        if spans or marks or snaps:
            open_now = perf_counter_ns()
            for scope in list(self.rec.structural.values()):
                if scope.tb is not None and scope.id not in closed:
                    spans.append(self.sealer.provisional(scope, open_now))
                    provisional += 1
            self._emit(spans, marks, snaps, provisional)
        dt = perf_counter_ns() - t0
        st = self.stats
        st.flushes += 1
        st.last_latency_ns = dt
        st.max_latency_ns = max(st.max_latency_ns, dt)
        st.last_flush_ns = time_ns()

    def _emit(self, spans: list[str], marks: list[str], snaps: list[str], provisional: int) -> None:
        # Snapshots first and marks before the spans that list them, so a batch never cites a
        # blob or mark that only a later batch carries. Provisional spans come last.
        n = MAX_RECORDS_PER_BATCH
        closed_left = len(spans) - provisional  # closed spans precede the provisional ones
        while spans or marks or snaps:
            take_snaps, snaps = snaps[:n], snaps[n:]
            room = n - len(take_snaps)
            take_marks, marks = marks[:room], marks[room:]
            room -= len(take_marks)
            take_spans, spans = (spans[:room], spans[room:]) if not marks else ([], spans)
            closed = min(len(take_spans), closed_left)
            closed_left -= closed
            self._write(take_spans, take_marks, take_snaps, closed)

    def _write(self, spans: list[str], marks: list[str], snaps: list[str], real_spans: int) -> None:
        created = time_ns()
        batch_id = self.rec.new_batch_id()
        parts = self.sealer.batch_parts(batch_id, created, spans, marks, snaps)
        path: Path | None = None
        if "spool" in self.outputs and self.spool is not None:
            path = self.spool.write(batch_file_name(created, batch_id), parts)
            if path is None:
                d = self.sealer.drops
                d.spool_write_failures += 1
                d.records_unwritten += len(marks) + len(snaps) + real_spans
        needs_dict = (
            "log" in self.outputs or self.memory is not None or self._sink_needs_records(path)
        )
        text = "".join(parts) if "stdout" in self.outputs or needs_dict else ""
        if "stdout" in self.outputs:
            try:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
        batch: dict[str, Any] | None = None
        if needs_dict:
            batch = json.loads(text)  # only the sinks that read records pay for dicts
        if "log" in self.outputs and batch is not None:
            self._log(batch)
        self.stats.batches += 1
        if self.memory is not None and batch is not None:
            self.memory.append(batch)
        if self.sink is not None:
            if batch is None:
                batch = {"batch_id": batch_id, "created_ns": created}
            try:
                self.sink.on_batch(path, batch)
            except Exception as exc:
                self.on_error("transport.on_batch", exc)

    def _sink_needs_records(self, path: Path | None) -> bool:
        """file_only needs nothing and http reads the file; the event stream (or http without
        a spool file) needs the batch itself."""
        name = getattr(self.sink, "name", None)
        return self.sink is not None and (
            name == "event_stream" or (path is None and name == "http")
        )

    @staticmethod
    def _log(batch: dict[str, Any]) -> None:
        log.info(
            "cirron batch %s: %d spans, %d marks, %d snapshots",
            batch["batch_id"][:8],
            len(batch["spans"]),
            len(batch["marks"]),
            len(batch["snapshots"]),
        )
        for span in batch["spans"]:
            if span["name"] in ("epoch", "cirron.session") and not span["attrs"].get("open"):
                ms = (span["end_ns"] - span["start_ns"]) / 1e6
                log.info(
                    "cirron %s[%s] closed after %.1f ms %s",
                    span["name"],
                    span["index"],
                    ms,
                    json.dumps(span["attrs"], default=str)[:200],
                )

    def abort(self) -> None:
        """Stop the thread without a final flush (a ``profile()`` that failed half-way)."""
        self._stop = True
        self._event.set()
        self.rec.wake = _noop

    def stop(self, timeout: float) -> None:
        """Final flush, then stop the thread (waits at most ``timeout`` seconds)."""
        self._stop = True
        self._event.set()
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(timeout)
        self.flush(timeout=max(timeout, 0.05))
        self.rec.wake = _noop


def _noop() -> None:
    return None
