"""Turning buffered records into spool batches (schema v1). Runs on the flusher thread.

Sealing drains every thread's buffers, counts what the bounded buffers dropped (gaps in the
per-thread sequence numbers), converts deferred values (tensors) and non-finite floats, and
emits plain dicts ready for JSON. It never touches the training thread's state beyond the
atomic ``deque.popleft``.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns, sleep, time_ns
from typing import Any

from cirron._version import __version__
from cirron.core.recorder import STRING_CAP, Deferred, Recorder, Scope, ThreadBuffer

__all__ = ["Drops", "Sealer", "clean_attrs", "mark_value"]

# Cap on mark ids listed on one span (a session can collect millions of marks). Marks always
# name their span, so nothing is lost: ``mark_ids_truncated`` says how many were left out.
MARK_IDS_PER_SPAN = 4096
# Cap on records in one batch file; a larger drain is written as several files.
MAX_RECORDS_PER_BATCH = 20_000
# Records joined per piece of a batch's text (a few hundred bytes each: pieces of ~64 KB).
RECORDS_PER_PIECE = 200
# The flusher shares the GIL with the training thread. A thread waiting for the GIL gets it only
# when the holder releases it or after the switch interval (5 ms by default), so a drain
# releases it (sleep(0)) after every 256 records (~0.3 ms of sealing) and the training thread
# never waits for a whole interval behind it.
_YIELD_MASK = 0xFF


_estr = json.encoder.encode_basestring_ascii  # the C string encoder json.dumps itself uses
_dumps_compact = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _dumps(obj: Any) -> str:
    return _dumps_compact(obj)


def _value_text(vtype: str, v: Any) -> str:
    """A mark value as JSON text (non-finite floats were already turned into None)."""
    if v is None:
        return "null"
    if vtype == "float":
        return float.__repr__(v)  # not repr(): numpy scalars print as np.float64(...)
    if vtype == "int":
        return int.__repr__(v)
    if vtype == "bool":
        return "true" if v else "false"
    return _estr(v)


def _mark_value_text(value: Any, attrs: dict[str, Any] | None) -> tuple[str, str, str]:
    """``(value_type, value JSON, attrs JSON)`` of a mark off the fast path: deferred tensors,
    strings, bools, non-finite floats, attributes."""
    try:
        vtype, v, non_finite = mark_value(value)
    except Exception as exc:  # a deferred tensor that cannot be read
        vtype, v, non_finite = "float", None, None
        attrs = dict(attrs or {}, conversion_error=type(exc).__name__)
    if attrs or non_finite:
        a = clean_attrs(attrs)
        if non_finite:
            a["non_finite"] = non_finite
        return vtype, _value_text(vtype, v), _dumps(a)
    return vtype, _value_text(vtype, v), "{}"


def _has_internal(attrs: dict[str, Any]) -> bool:
    return any(type(k) is str and k.startswith("__") for k in list(attrs))


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
    """Drains a :class:`Recorder` into schema-v1 batch texts."""

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
    _names: dict[str, str] = field(default_factory=dict)  # name -> its JSON text

    def reset_after_fork(self) -> None:
        self._pending_mark_ids = defaultdict(list)
        self._truncated = defaultdict(int)

    def drain(self) -> tuple[list[str], list[str], list[str], set[int]]:
        """Take every buffered record. Returns ``(spans, marks, snapshots, closed)``: each record
        as a JSON object text, and the ids of the spans that closed.

        Records go straight to JSON text (no dict per record on the common path): sealing runs
        on the flusher thread but shares the GIL with the training loop, so its cost per record
        is overhead the user pays.
        """
        rec = self.rec
        buffers = list(rec.buffers)
        marks: list[str] = []
        for tb in buffers:
            self._drain_marks(tb, marks)
        spans: list[str] = []
        closed: set[int] = set()
        for tb in buffers:
            self._drain_spans(tb, spans, closed)
            self.drops.scopes_depth += tb.depth_drops
            tb.depth_drops = 0
            self.drops.bad_mark_values += tb.bad_values
            tb.bad_values = 0
        self._forget_dead(buffers)
        snaps: list[str] = []
        q = rec.snapshots
        while q:
            try:
                snaps.append(_dumps(q.popleft()))
            except IndexError:
                break
        if len(self._names) > 4096:
            self._names.clear()
        return spans, marks, snaps, closed

    def _forget_dead(self, buffers: list[ThreadBuffer]) -> None:
        dead = [tb for tb in buffers if not tb.thread.is_alive() and not tb.marks and not tb.spans]
        if dead:
            with self.rec._buffers_lock:
                self.rec.buffers = [tb for tb in self.rec.buffers if tb not in dead]

    def _name(self, name: str) -> str:
        enc = self._names.get(name)
        if enc is None:
            enc = self._names[name] = _estr(name)
        return enc

    def _drain_marks(self, tb: ThreadBuffer, out: list[str]) -> None:
        q = tb.marks
        last = tb.last_mark_seq
        off = self.wall_offset
        pending = self._pending_mark_ids
        truncated = self._truncated
        base = tb.mark_id(0, self.rec.prefix)
        span_text: dict[int, str] = {}
        names = self._names
        # Take what is buffered now, not what arrives meanwhile: under sustained overload a
        # drain that chased the producer would never end and its output would grow without
        # bound. Overload becomes counted drops (drop-oldest) instead.
        for i in range(len(q)):
            if not i & _YIELD_MASK and i:
                sleep(0)  # let a training thread waiting for the GIL have it now (see _YIELD_MASK)
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
            mid = "%032x" % (base + seq)
            if span is None:
                st = '"root"'
            else:
                cached = span_text.get(span)
                if cached is None:
                    cached = span_text[span] = '"%032x"' % span
                st = cached
                ids = pending[span]
                if len(ids) < MARK_IDS_PER_SPAN:
                    ids.append(mid)
                else:
                    truncated[span] += 1
            nm = names.get(name)
            if nm is None:
                nm = names[name] = _estr(name)
            tv = type(value)
            if attrs is None and tv is float and value - value == 0.0:  # most marks: fast path
                vtype, vtext, attrs_text = "float", float.__repr__(value), "{}"
            elif attrs is None and tv is int:
                vtype, vtext, attrs_text = "int", int.__repr__(value), "{}"
            else:
                vtype, vtext, attrs_text = _mark_value_text(value, attrs)
            out.append(
                '{"id":"%s","span_id":%s,"name":%s,"value_type":"%s","value":%s,"attrs":%s,'
                '"ts_ns":%d,"kind":"%s"}' % (mid, st, nm, vtype, vtext, attrs_text, t + off, kind)
            )
        tb.last_mark_seq = last

    def _drain_spans(self, tb: ThreadBuffer, out: list[str], closed: set[int]) -> None:
        # Written for speed: most spans (forward, backward, data_load, batch) carry no attrs
        # beyond a batch's data_load_ns, and take the inlined branch below.
        q = tb.spans
        last = tb.last_span_seq
        tid = tb.thread_id
        off = self.wall_offset
        names = self._names
        pending = self._pending_mark_ids
        truncated = self._truncated
        session = self.session_id()
        head = (
            ',"cpu_ns":null,"gpu_ns":null,"memory_peak_bytes":null,"thread_id":%d,"pid":%d,'
            '"rank":%d,"attrs":' % (tid, self.rec.pid, self.rank)
        )
        tail = "}" if session is None else ',"session_id":"%032x"}' % session
        parents: dict[Any, str] = {None: "null"}
        child = '{"id":"%s","name":"%s","parent_id":"%s","index":null,"start_ns":%d,"end_ns":%d'
        child_tail = head + '{},"mark_ids":[]' + tail
        # Unpacked children's ids: the batch's with hex digit 16 set to 1-4. Span ids have a 0
        # there (marks an 8 or more) while the opening thread's number is below 2**20 (see
        # ThreadBuffer); a batch id without it gets fresh ids for its children.
        new_id = self.rec.buffer().span_ids.__next__
        for i in range(len(q)):  # what is buffered now (see _drain_marks)
            if not i & _YIELD_MASK and i:
                sleep(0)
            try:
                sid, parent, name, index, start, end, attrs, et, seq = q.popleft()
            except IndexError:
                break
            if seq != last + 1:
                self.drops.spans += seq - last - 1
            last = seq
            closed.add(sid)
            if type(et) is tuple:
                # A batch with its timed children packed in (Scope.close): start/end of
                # data_load, forward, backward, optimizer_step; end -1 where none happened.
                bid = "%032x" % sid
                head16, tail15 = bid[:16], bid[17:]
                derive = bid[16] == "0"
                for digit, child_name, t0, t1 in (
                    ("1", "data_load", et[0], et[1]),
                    ("2", "forward", et[2], et[3]),
                    ("3", "backward", et[4], et[5]),
                    ("4", "optimizer_step", et[6], et[7]),
                ):
                    if t1 >= 0:
                        cid = head16 + digit + tail15 if derive else "%032x" % new_id()
                        out.append(
                            child % (cid, child_name, bid, t0 + off, max(t1, t0) + off) + child_tail
                        )
                et = None
            if type(attrs) is dict and len(attrs) == 1:  # a callback's batch: data_load_ns only
                v = attrs.get("data_load_ns")
                if type(v) is int:
                    attrs = v
            if et is not None or not (attrs is None or type(attrs) is int) or sid in truncated:
                out.append(self._span_text(sid, parent, name, index, start, end, attrs, et, tid))
                continue
            pt = parents.get(parent)
            if pt is None:
                pt = parents[parent] = '"%032x"' % parent
            nm = names.get(name)
            if nm is None:
                nm = names[name] = _estr(name)
            ids = pending.pop(sid, None)
            out.append(
                '{"id":"%032x","name":%s,"parent_id":%s,"index":%s,"start_ns":%d,"end_ns":%d%s%s,'
                '"mark_ids":[%s]%s'
                % (
                    sid,
                    nm,
                    pt,
                    "null" if index is None else "%d" % index,
                    start + off,
                    (end if end > start else start) + off,
                    head,
                    "{}" if attrs is None else '{"data_load_ns":%d}' % attrs,
                    ",".join(['"%s"' % i for i in ids]) if ids else "",
                    tail,
                )
            )
        tb.last_span_seq = last

    def _span_text(
        self,
        sid: int,
        parent: int | None,
        name: str,
        index: Any,
        start: int,
        end: int,
        attrs: dict[str, Any] | int | None,
        et: Any,
        tid: int,
    ) -> str:
        off = self.wall_offset
        gpu = mem = "null"
        if attrs or et is not None or sid in self._truncated:
            a = clean_attrs(attrs)
            if et is not None:
                a["exception"] = getattr(et, "__name__", str(et))
            dropped = self._truncated.pop(sid, 0)
            if dropped:
                a["mark_ids_truncated"] = dropped
            if self.span_resolvers and type(attrs) is dict and _has_internal(attrs):
                d: dict[str, Any] = {"attrs": a, "gpu_ns": None, "memory_peak_bytes": None}
                for resolve in self.span_resolvers:
                    resolve(attrs, d)
                a = d["attrs"]
                if d["gpu_ns"] is not None:
                    gpu = "%d" % d["gpu_ns"]
                if d["memory_peak_bytes"] is not None:
                    mem = "%d" % d["memory_peak_bytes"]
            attrs_text = _dumps(a)
        else:
            attrs_text = "{}"
        ids = self._pending_mark_ids.pop(sid, None)
        session = self.session_id()
        return (
            '{"id":"%032x","name":%s,"parent_id":%s,"index":%s,"start_ns":%d,"end_ns":%d,'
            '"cpu_ns":null,"gpu_ns":%s,"memory_peak_bytes":%s,"thread_id":%d,"pid":%d,'
            '"rank":%d,"attrs":%s,"mark_ids":[%s]%s}'
            % (
                sid,
                self._name(name),
                "null" if parent is None else '"%032x"' % parent,
                "%d" % index if type(index) is int else "null",
                start + off,
                max(end, start) + off,
                gpu,
                mem,
                tid,
                self.rec.pid,
                self.rank,
                attrs_text,
                ",".join(['"%s"' % i for i in ids]) if ids else "",
                "" if session is None else ',"session_id":"%032x"' % session,
            )
        )

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
        """One span as a dict (provisional records of still-open spans use this path)."""
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

    def provisional(self, scope: Scope, now: int) -> str:
        """A still-open structural span as it stands now (superseded by its closing record)."""
        parent = scope.parent.id if scope.parent is not None else None
        if scope.name != "cirron.session" and parent is None:
            parent = self.rec.root_id
        tb = scope.tb
        return _dumps(
            self.span_dict(
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
        )

    @staticmethod
    def batch_parts(
        batch_id: str, created_ns: int, spans: list[str], marks: list[str], snaps: list[str]
    ) -> list[str]:
        """The batch's JSON text as a list of pieces (records and separators): joined, they are
        the batch; written piece by piece, no multi-megabyte string is ever built."""
        parts = [
            '{"schema_version":1,"sdk_version":%s,"batch_id":"%s","created_ns":%d,"spans":['
            % (_estr(__version__), batch_id, created_ns)
        ]
        for records, closing in ((spans, '],"marks":['), (marks, '],"snapshots":['), (snaps, "]}")):
            for k in range(0, len(records), RECORDS_PER_PIECE):
                if k:
                    parts.append(",")
                parts.append(",".join(records[k : k + RECORDS_PER_PIECE]))
            parts.append(closing)
        return parts
