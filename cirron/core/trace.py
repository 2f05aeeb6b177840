"""Reading a spool back: batches → one consistent set of spans, marks and snapshots per session.

This module is the read side of the spool format (``docs/spool-format.md``). It never writes,
imports no ML framework and no pandas at import time, and tolerates what a real spool holds:
batches in any order, spans written provisionally while still open (``attrs.open``) and
superseded later, duplicates from at-least-once delivery, corrupt or foreign files.

>>> data = load([])                     # normally: load(b for _, b in iter_batches(spool_dir))
>>> sessions(data)
[]
>>> render(data)
'no spans recorded yet'

Finding and reading the files is :mod:`cirron.core.trace_files`; the output side lives in
:mod:`cirron.core.trace_render` (tree, dict, json, DataFrame, summary),
:mod:`cirron.core.trace_export` (json, csv, parquet, snapshot tables) and :mod:`cirron.core.otel`
(OTLP/JSON); their public functions are re-exported here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cirron.core.errors import CirronError
from cirron.core.trace_files import (
    BATCH_NAME,
    SUPPORTED_SCHEMA_VERSIONS,
    iter_batches,
    spool_dir_of,
)

__all__ = [
    "BATCH_NAME",
    "SUPPORTED_SCHEMA_VERSIONS",
    "AmbiguousSession",
    "AmbiguousSpan",
    "SessionInfo",
    "SessionNotFound",
    "TraceData",
    "export",
    "group_runs",
    "iter_batches",
    "load",
    "load_dir",
    "render",
    "resolve_sessions",
    "sessions",
    "snapshot_table",
    "spool_dir_of",
    "summary",
]

SESSION = "cirron.session"
UNKNOWN_STATUS = "unknown (no clean exit)"

Record = dict[str, Any]


class SessionNotFound(CirronError, LookupError):
    """No session matches the id, prefix or run id that was asked for."""


class AmbiguousSession(SessionNotFound):
    """A session prefix matches more than one session; ``matches`` lists their ids."""

    def __init__(self, message: str, matches: list[str]) -> None:
        super().__init__(message)
        self.matches = matches


class AmbiguousSpan(CirronError, LookupError):
    """A span id prefix or suffix matches more than one span; ``matches`` lists their ids."""

    def __init__(self, message: str, matches: list[str]) -> None:
        super().__init__(message)
        self.matches = matches


# -- the merged data ---------------------------------------------------------------------------


@dataclass
class TraceData:
    """Everything read from a spool, after superseding and de-duplication.

    ``spans`` maps id → the winning record; ``marks`` and ``snapshots`` map id → record.
    ``session_of`` maps every span id to the id of its ``cirron.session`` (or None).
    """

    spans: dict[str, Record] = field(default_factory=dict)
    marks: dict[str, Record] = field(default_factory=dict)
    snapshots: dict[str, Record] = field(default_factory=dict)
    batch_count: int = 0
    root: Path | None = None  # the .cirron directory, when read from disk (for snapshot blobs)

    @cached_property
    def children(self) -> dict[str, list[str]]:
        """Parent id → child ids, ordered by start time. Orphans hang under their session."""
        kids: dict[str, list[str]] = {}
        for sid, span in self.spans.items():
            parent = span.get("parent_id")
            if parent not in self.spans:
                parent = self.session_of.get(sid) if span.get("name") != SESSION else None
                if parent == sid or parent not in self.spans:
                    continue
            kids.setdefault(parent, []).append(sid)
        for ids in kids.values():
            ids.sort(key=lambda i: _order_key(self.spans[i]))
        return kids

    @cached_property
    def session_of(self) -> dict[str, str | None]:
        """Span id → session id: the span's ``session_id`` field, else its ancestor session."""
        out: dict[str, str | None] = {}
        for sid in self.spans:
            out[sid] = self._find_session(sid)
        return out

    def _find_session(self, sid: str) -> str | None:
        seen: set[str] = set()
        cur: str | None = sid
        while cur is not None and cur in self.spans and cur not in seen:
            span = self.spans[cur]
            if span.get("name") == SESSION and span.get("parent_id") is None:
                return cur
            tagged = span.get("session_id")
            if isinstance(tagged, str):
                return tagged
            seen.add(cur)
            cur = span.get("parent_id")
        return None

    @cached_property
    def marks_by_span(self) -> dict[str, list[Record]]:
        """Span id → its marks by time. ``"root"`` marks go to the session whose time covers them."""
        out: dict[str, list[Record]] = {}
        for mark in self.marks.values():
            target = mark.get("span_id")
            if target not in self.spans:
                target = mark.get("session_id") or self._session_at(mark.get("ts_ns", 0))
            if isinstance(target, str):
                out.setdefault(target, []).append(mark)
        for marks in out.values():
            marks.sort(key=lambda m: (m.get("ts_ns", 0), m.get("id", "")))
        return out

    def _session_at(self, ts: int) -> str | None:
        best: str | None = None
        for sid, span in self.spans.items():
            covers = span.get("name") == SESSION and span["start_ns"] <= ts <= span["end_ns"]
            if covers and (best is None or span["start_ns"] > self.spans[best]["start_ns"]):
                best = sid
        return best

    @cached_property
    def session_ids(self) -> list[str]:
        """Every session id, oldest first (including ids spans cite whose record is missing)."""
        ids = {s for s in self.session_of.values() if s is not None}
        return sorted(ids, key=lambda s: (self._session_start(s), s))

    def _session_start(self, sid: str) -> int:
        if sid in self.spans:
            return int(self.spans[sid]["start_ns"])
        return min(
            (int(sp["start_ns"]) for i, sp in self.spans.items() if self.session_of[i] == sid),
            default=0,
        )

    def spans_of(self, session_id: str) -> list[str]:
        """Ids of the spans of one session (its root included), by start time."""
        ids = [i for i, s in self.session_of.items() if s == session_id]
        return sorted(ids, key=lambda i: _order_key(self.spans[i]))

    def is_open(self, span_id: str) -> bool:
        """True if the newest record of the span is provisional (written while it was open)."""
        return bool(self.spans[span_id].get("attrs", {}).get("open"))


def _order_key(span: Record) -> tuple[int, int, str]:
    index = span.get("index")
    return (int(span.get("start_ns", 0)), index if isinstance(index, int) else -1, span["id"])


def _supersedes(new: tuple[bool, int, int, int], old: tuple[bool, int, int, int]) -> bool:
    return new >= old


def load(batches: Iterable[Record]) -> TraceData:
    """Merge batches (in any order) into one :class:`TraceData`.

    A span may appear several times: a record without ``attrs.open`` beats a provisional one,
    otherwise the newest batch wins (``created_ns``, then the record's ``end_ns``). Marks and
    snapshots are de-duplicated by id. Malformed records (no id or times) are skipped.

    >>> b = {"schema_version": 1, "created_ns": 2, "spans": [], "marks": [], "snapshots": []}
    >>> load([b]).batch_count
    1
    """
    data = TraceData()
    rank: dict[str, tuple[bool, int, int, int]] = {}
    seq = 0
    for batch in batches:
        data.batch_count += 1
        created = batch.get("created_ns")
        created = created if isinstance(created, int) else 0
        for span in _records(batch, "spans"):
            if not _valid_span(span):
                continue
            seq += 1
            closed = not (isinstance(span.get("attrs"), dict) and span["attrs"].get("open"))
            key = (closed, created, int(span["end_ns"]), seq)
            if span["id"] not in rank or _supersedes(key, rank[span["id"]]):
                rank[span["id"]] = key
                data.spans[span["id"]] = _normalise_span(span)
        for mark in _records(batch, "marks"):
            if isinstance(mark.get("id"), str) and isinstance(mark.get("name"), str):
                data.marks.setdefault(mark["id"], mark)
        for snap in _records(batch, "snapshots"):
            if isinstance(snap.get("id"), str) and isinstance(snap.get("span_id"), str):
                data.snapshots.setdefault(snap["id"], snap)
    return data


def _records(batch: Record, key: str) -> list[Record]:
    items = batch.get(key)
    return [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []


def _valid_span(span: Record) -> bool:
    return (
        isinstance(span.get("id"), str)
        and isinstance(span.get("name"), str)
        and isinstance(span.get("start_ns"), int)
        and isinstance(span.get("end_ns"), int)
    )


def _normalise_span(span: Record) -> Record:
    if not isinstance(span.get("attrs"), dict):
        span = {**span, "attrs": {}}
    if span["end_ns"] < span["start_ns"]:
        span = {**span, "end_ns": span["start_ns"]}
    return span


def load_dir(path: Path, *, on_warning: Callable[[str], None] | None = None) -> TraceData:
    """Read a ``.cirron`` directory (or its ``spool/``) into :class:`TraceData`.

    >>> load_dir(Path("/nonexistent")).batch_count
    0
    """
    spool = spool_dir_of(Path(path))
    data = load(b for _, b in iter_batches(spool, on_warning=on_warning))
    data.root = spool.parent
    return data


# -- sessions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    """One ``profile()`` lifetime in one process, as the spool shows it."""

    id: str
    start_ns: int
    end_ns: int
    status: str
    rank: int | None
    world_size: int | None
    span_count: int
    mark_count: int
    name: str | None
    version: str | None
    run_id: str | None
    pid: int | None
    host: str | None
    framework: str | None
    sdk_version: str | None
    open: bool

    @property
    def duration_ns(self) -> int:
        """``end_ns - start_ns`` (up to the last seal for a session that never closed)."""
        return self.end_ns - self.start_ns

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field plus ``duration_ns``."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["duration_ns"] = self.duration_ns
        return out


def sessions(data: TraceData) -> list[SessionInfo]:
    """One :class:`SessionInfo` per session, oldest first.

    >>> sessions(TraceData())
    []
    """
    return [_session_info(data, sid) for sid in data.session_ids]


def _session_info(data: TraceData, sid: str) -> SessionInfo:
    ids = data.spans_of(sid)
    root = data.spans.get(sid)
    attrs: Record = root.get("attrs", {}) if root else {}
    starts = [data.spans[i]["start_ns"] for i in ids]
    ends = [data.spans[i]["end_ns"] for i in ids]
    is_open = root is None or data.is_open(sid)
    return SessionInfo(
        id=sid,
        start_ns=int(root["start_ns"]) if root else min(starts, default=0),
        end_ns=int(root["end_ns"]) if root and not is_open else max(ends, default=0),
        status=_status(root, is_open),
        rank=_int(attrs.get("rank", root.get("rank") if root else None)),
        world_size=_int(attrs.get("world_size")),
        span_count=len(ids),
        mark_count=sum(len(data.marks_by_span.get(i, ())) for i in ids),
        name=_str(attrs.get("name")),
        version=_str(attrs.get("version")),
        run_id=_str(attrs.get("run_id")),
        pid=_int(attrs.get("pid", root.get("pid") if root else None)),
        host=_str(attrs.get("host")),
        framework=_str(attrs.get("framework")),
        sdk_version=_str(attrs.get("sdk_version")),
        open=is_open,
    )


def _status(root: Record | None, is_open: bool) -> str:
    if root is None:
        return "unknown (session record missing)"
    if not is_open:
        return str(root.get("attrs", {}).get("status") or "finished")
    if _alive_here(root):
        return "running"
    return UNKNOWN_STATUS


def _alive_here(root: Record) -> bool:
    """A provisional session is ``running`` only if its process is alive on this very host."""
    attrs = root.get("attrs", {})
    pid = attrs.get("pid", root.get("pid"))
    if not isinstance(pid, int) or attrs.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def group_runs(infos: list[SessionInfo]) -> list[list[SessionInfo]]:
    """Group sessions of one distributed run (same ``run_id``); others stand alone.

    Groups are ordered by their first start; within a group, by rank.
    """
    groups: dict[str, list[SessionInfo]] = {}
    for info in infos:
        groups.setdefault(f"run:{info.run_id}" if info.run_id else f"s:{info.id}", []).append(info)
    out = [
        sorted(g, key=lambda i: (i.rank if i.rank is not None else -1, i.start_ns))
        for g in groups.values()
    ]
    return sorted(out, key=lambda g: min(i.start_ns for i in g))


def resolve_sessions(data: TraceData, ref: str | None) -> list[str]:
    """Session ids for ``ref``: None → the newest; ``"all"``; an id, a run id or a unique prefix.

    Raises :class:`SessionNotFound`, or :class:`AmbiguousSession` listing the matches.

    >>> resolve_sessions(TraceData(), None)
    []
    """
    ids = data.session_ids
    if ref is None:
        return ids[-1:]
    if ref == "all":
        return list(ids)
    if ref in ids:
        return [ref]
    runs = {sid: data.spans.get(sid, {}).get("attrs", {}).get("run_id") for sid in ids}
    by_run = [sid for sid in ids if runs[sid] == ref]
    if by_run:
        return by_run
    matches = [sid for sid in ids if sid.startswith(ref.lower())]
    if len(matches) == 1:
        return matches
    run_matches = sorted({str(r) for r in runs.values() if r and str(r).startswith(ref)})
    if not matches and len(run_matches) == 1:
        return [sid for sid in ids if runs[sid] == run_matches[0]]
    if matches or run_matches:
        found = matches or run_matches
        raise AmbiguousSession(
            f"session {ref!r} is ambiguous; it matches: {', '.join(found)}", found
        )
    raise SessionNotFound(
        f"no session matches {ref!r}; `cirron traces list` shows the sessions in this spool"
    )


# -- re-exports of the output side (imported lazily so reading stays cheap) --------------------


def render(data: TraceData, **options: Any) -> Any:
    """The tree text, dict, JSON or DataFrame of a session; the keyword options
    (``session_id``, ``format``, ``name``, ``last``, ``depth``, ``min_wall_ns``, ``color``) are
    :func:`cirron.core.trace_render.render`'s."""
    from cirron.core.trace_render import render as _render

    return _render(data, **options)


def summary(data: TraceData, session_id: str | None = None) -> str:
    """See :func:`cirron.core.trace_render.summary`."""
    from cirron.core.trace_render import summary as _summary

    return _summary(data, session_id)


def export(data: TraceData, format: str, **kwargs: Any) -> Any:
    """See :func:`cirron.core.trace_export.export`."""
    from cirron.core.trace_export import export as _export

    return _export(data, format, **kwargs)


def snapshot_table(
    data: TraceData, span_id: str | None = None, session_id: str | None = None
) -> list[dict[str, Any]]:
    """See :func:`cirron.core.trace_export.snapshot_table`."""
    from cirron.core.trace_export import snapshot_table as _table

    return _table(data, span_id, session_id)
