"""Turning buffered records into spool batches (schema v1). Runs on the flusher thread.

Sealing drains every thread's buffers, counts what the bounded buffers dropped (gaps in the
per-thread sequence numbers), converts deferred values (tensors) and non-finite floats, and
emits plain dicts ready for JSON. It never touches the training thread's state beyond the
atomic ``deque.popleft``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns, time_ns
from typing import Any

from cirron._version import __version__
from cirron.core.recorder import STRING_CAP, Deferred, Recorder, Scope, ThreadBuffer

__all__ = ["Drops", "Sealer", "clean_attrs", "hex_id", "mark_value"]

# Cap on mark ids listed on one span (a session can collect millions of marks). Marks always
# name their span, so nothing is lost: ``mark_ids_truncated`` says how many were left out.
MARK_IDS_PER_SPAN = 4096
# Cap on records in one batch file; a larger drain is written as several files.
MAX_RECORDS_PER_BATCH = 20_000


def hex_id(n: int | None) -> str | None:
    return None if n is None else format(n, "032x")


@dataclass
class Drops:
    """Records lost, by reason. Every number here is also shown by ``ci.health()``."""

    marks: int = 0  # mark buffer full (drop-oldest)
    spans: int = 0  # span buffer full
    scopes_depth: int = 0  # deeper than MAX_DEPTH
    bad_mark_values: int = 0  # values mark() does not accept
    spool_files: int = 0  # spool files evicted at the cap
    spool_write_failures: int = 0  # batches that could not be written (disk full, read-only)
    records_unwritten: int = 0  # spans+marks+snapshots in those batches

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _finite(x: float) -> tuple[float | None, str | None]:
    if math.isfinite(x):
        return x, None
    return None, ("nan" if x != x else ("inf" if x > 0 else "-inf"))


def mark_value(value: Any) -> tuple[str, Any, str | None]:
    """``(value_type, json_value, non_finite)`` for a recorded mark value."""
    if isinstance(value, Deferred):
        value = value.resolve()
    if isinstance(value, bool):
        return "bool", value, None
    if isinstance(value, int):
        return "int", value, None
    if isinstance(value, float):
        v, nf = _finite(value)
        return "float", v, nf
    if isinstance(value, str):
        return "string", _cap(value), None
    if hasattr(value, "item"):  # numpy scalar produced by a deferred conversion
        return mark_value(value.item())
    return "string", _cap(str(value)), None


def _cap(s: str) -> str:
    b = s.encode("utf-8")
    if len(b) <= STRING_CAP:
        return s
    return b[:STRING_CAP].decode("utf-8", "ignore")


def clean_attrs(attrs: dict[str, Any] | int | None) -> dict[str, Any]:
    """Make user attrs JSON-safe: non-finite floats → None, unknown objects → short strings.

    A bare int is a batch's only attribute, ``data_load_ns`` (see ``Recorder.batches``)."""
    if not attrs:
        return {}
    if type(attrs) is int:
        return {"data_load_ns": attrs}
    assert isinstance(attrs, dict)
    out: dict[str, Any] = {}
    # list() copies in one C call, so an adapter adding an attribute to a still-open span on
    # another thread cannot change the dict under this loop.
    for k, v in list(attrs.items()):
        if isinstance(k, str) and k.startswith("__"):
            continue  # internal keys (e.g. pending GPU events) never reach the spool
        out[str(k)] = _clean(v, 0)
    return out


def _clean(v: Any, depth: int) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Deferred):
        try:
            return _clean(v.resolve(), depth)
        except Exception:
            return None
    if depth < 4:
        if isinstance(v, dict):
            return {str(k): _clean(x, depth + 1) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [_clean(x, depth + 1) for x in v[:256]]
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        try:
            return _clean(v.item(), depth)
        except Exception:
            return None
    return _cap(repr(v))


@dataclass
class Sealer:
    """Drains a :class:`Recorder` into schema-v1 batch dicts."""

    rec: Recorder
    rank: int = 0
    session_id: Callable[[], int | None] = lambda: None
    drops: Drops = field(default_factory=Drops)
    wall_offset: int = field(default_factory=lambda: time_ns() - perf_counter_ns())
    _pending_mark_ids: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    _truncated: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    span_resolvers: list[Callable[[dict[str, Any], dict[str, Any]], None]] = field(
        default_factory=list
    )

    def reset_after_fork(self) -> None:
        self._pending_mark_ids = defaultdict(list)
        self._truncated = defaultdict(int)

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Take every buffered record; return ``(spans, marks, snapshots)`` as JSON-ready dicts."""
        rec = self.rec
        buffers = list(rec.buffers)
        marks: list[dict[str, Any]] = []
        for tb in buffers:
            self._drain_marks(tb, marks)
        spans: list[dict[str, Any]] = []
        for tb in buffers:
            self._drain_spans(tb, spans)
            self.drops.scopes_depth += tb.depth_drops
            tb.depth_drops = 0
            self.drops.bad_mark_values += tb.bad_values
            tb.bad_values = 0
        self._forget_dead(buffers)
        snaps: list[dict[str, Any]] = []
        q = rec.snapshots
        while q:
            try:
                snaps.append(q.popleft())
            except IndexError:
                break
        return spans, marks, snaps

    def _forget_dead(self, buffers: list[ThreadBuffer]) -> None:
        dead = [tb for tb in buffers if not tb.thread.is_alive() and not tb.marks and not tb.spans]
        if dead:
            with self.rec._buffers_lock:
                self.rec.buffers = [tb for tb in self.rec.buffers if tb not in dead]

    def _drain_marks(self, tb: ThreadBuffer, out: list[dict[str, Any]]) -> None:
        q = tb.marks
        prefix = self.rec.prefix
        last = tb.last_mark_seq
        off = self.wall_offset
        pending = self._pending_mark_ids
        while True:
            try:
                seq, t, span, name, value, kind, attrs = q.popleft()
            except IndexError:
                break
            if seq != last + 1:
                self.drops.marks += seq - last - 1
            last = seq
            if (kind != "point" and kind != "summary") or type(name) is not str:
                # Checked here, not on the hot path; counted in the sealing thread's buffer.
                if type(name) is str:
                    self.rec.bad_value(name, kind, what="kind")
                else:
                    self.rec.bad_value(repr(name), name, what="name")
                continue
            mid = format(tb.mark_id(seq, prefix), "032x")
            try:
                vtype, v, non_finite = mark_value(value)
            except Exception as exc:  # a deferred tensor that cannot be read
                vtype, v, non_finite = "float", None, None
                attrs = dict(attrs or {}, conversion_error=type(exc).__name__)
            a = clean_attrs(attrs)
            if non_finite:
                a["non_finite"] = non_finite
            if span is not None:
                ids = pending[span]
                if len(ids) < MARK_IDS_PER_SPAN:
                    ids.append(mid)
                else:
                    self._truncated[span] += 1
            out.append(
                {
                    "id": mid,
                    "span_id": format(span, "032x") if span is not None else "root",
                    "name": name,
                    "value_type": vtype,
                    "value": v,
                    "attrs": a,
                    "ts_ns": t + off,
                    "kind": kind,
                }
            )
        tb.last_mark_seq = last

    def _drain_spans(self, tb: ThreadBuffer, out: list[dict[str, Any]]) -> None:
        q = tb.spans
        last = tb.last_span_seq
        while True:
            try:
                sid, parent, name, index, start, end, attrs, et, seq = q.popleft()
            except IndexError:
                break
            if seq != last + 1:
                self.drops.spans += seq - last - 1
            last = seq
            out.append(
                self.span_dict(sid, parent, name, index, start, end, attrs, et, tb.thread_id)
            )
        tb.last_span_seq = last

    def span_dict(
        self,
        sid: int,
        parent: int | None,
        name: str,
        index: int | None,
        start: int,
        end: int,
        attrs: dict[str, Any] | None,
        et: Any,
        thread_id: int,
        *,
        provisional: bool = False,
    ) -> dict[str, Any]:
        off = self.wall_offset
        a = clean_attrs(attrs)
        if et is not None:
            a["exception"] = getattr(et, "__name__", str(et))
        if provisional:
            a["open"] = True
            ids = []  # listed once, by the closing record (a session collects many marks)
        else:
            ids = self._pending_mark_ids.pop(sid, [])
            dropped = self._truncated.pop(sid, 0)
            if dropped:
                a["mark_ids_truncated"] = dropped
        d: dict[str, Any] = {
            "id": format(sid, "032x"),
            "name": name,
            "parent_id": format(parent, "032x") if parent is not None else None,
            "index": index if isinstance(index, int) else None,
            "start_ns": start + off,
            "end_ns": max(end, start) + off,
            "cpu_ns": None,
            "gpu_ns": None,
            "memory_peak_bytes": None,
            "thread_id": thread_id,
            "pid": self.rec.pid,
            "rank": self.rank,
            "attrs": a,
            "mark_ids": ids,
        }
        session = self.session_id()
        if session is not None:
            d["session_id"] = format(session, "032x")
        if attrs and type(attrs) is dict:
            for resolve in self.span_resolvers:
                resolve(attrs, d)
        return d

    def provisional(self, scope: Scope, now: int) -> dict[str, Any]:
        """A still-open structural span as it stands now (superseded by its closing record)."""
        parent = scope.parent.id if scope.parent is not None else None
        if scope.name != "cirron.session" and parent is None:
            parent = self.rec.root_id
        tb = scope.tb
        return self.span_dict(
            scope.id,
            parent,
            scope.name,
            scope.index,
            scope.start,
            now,
            scope.attrs,
            None,
            tb.thread_id if tb else 0,
            provisional=True,
        )

    def batch(
        self,
        batch_id: str,
        created_ns: int,
        spans: list[dict[str, Any]],
        marks: list[dict[str, Any]],
        snaps: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "sdk_version": __version__,
            "batch_id": batch_id,
            "created_ns": created_ns,
            "spans": spans,
            "marks": marks,
            "snapshots": snaps,
        }
