"""Turning :class:`~cirron.core.trace.TraceData` into what a person or a notebook reads.

``render`` gives the text tree, a nested dict, its JSON, or a pandas DataFrame; ``summary`` gives
the one-line digest of a run. pandas is imported only for ``format="df"``.

>>> from cirron.core.trace import load
>>> fmt_duration(812_000), fmt_duration(12_345_678), fmt_duration(1_523_000_000)
('812 µs', '12.3 ms', '1.52 s')
>>> parse_duration("5ms")
5000000
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cirron.core.errors import CirronDependencyError
from cirron.core.trace import SESSION, Record, TraceData, resolve_sessions, sessions

if TYPE_CHECKING:
    import pandas

__all__ = ["FORMATS", "fmt_duration", "parse_duration", "render", "select", "summary"]

FORMATS = ("tree", "dict", "json", "df")
HEAD, TAIL = 3, 2  # a run of more than HEAD + TAIL + 2 same-name siblings is collapsed
INLINE_MAX = 8  # a collapsed group's visible span shows at most this many leaf children inline
TRAIN_PHASES = (None, "train", "training")

# -- numbers -----------------------------------------------------------------------------------

_UNITS = ((1, "ns"), (1_000, "µs"), (1_000_000, "ms"), (1_000_000_000, "s"))


def fmt_duration(ns: float) -> str:
    """Human duration with three significant digits: ``812 µs``, ``12.3 ms``, ``1.52 s``, ``2m 03s``."""
    if ns < 0:
        return "-" + fmt_duration(-ns)
    if ns >= 60e9:
        secs = round(ns / 1e9)
        if secs >= 3600:
            return f"{secs // 3600}h {secs % 3600 // 60:02d}m"
        return f"{secs // 60}m {secs % 60:02d}s"
    if ns < 1000:
        return f"{round(ns)} ns"
    for i, (scale, unit) in enumerate(_UNITS):
        v = ns / scale
        nxt = _UNITS[i + 1][0] / scale if i + 1 < len(_UNITS) else math.inf
        text = _sig3(v)
        if float(text) < nxt:
            return f"{text} {unit}"
    return f"{_sig3(ns / 1e9)} s"  # pragma: no cover - the loop always returns


def _sig3(v: float) -> str:
    if v == 0:
        return "0"
    v = float(f"{v:.3g}")  # round first, so 999.7 becomes 1000 and not "1000" with 0 decimals
    decimals = max(0, 2 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}"


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ns|us|µs|μs|ms|s|m|h)?\s*$")
_SCALE = {"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def parse_duration(text: str) -> int:
    """``"5ms"``, ``"250us"``, ``"1.5s"``, ``"100ns"`` → nanoseconds (a bare number means ms).

    >>> parse_duration("1.5s"), parse_duration("250us"), parse_duration("2")
    (1500000000, 250000, 2000000)
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 5ms, 250us, 1.5s)")
    return round(float(match.group(1)) * _SCALE[match.group(2) or "ms"])


def fmt_value(v: Any) -> str:
    """A mark value as text: floats to 3 significant digits, bools lower-case."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return f"{v:.3g}"
    return str(v)


def mark_value(mark: Record) -> Any:
    """The mark's value, with a non-finite ``null`` turned back into ``nan``/``inf``/``-inf``."""
    value = mark.get("value")
    if value is None:
        nf = (mark.get("attrs") or {}).get("non_finite")
        if nf in ("nan", "inf", "-inf"):
            return float(nf)
    return value


# -- selection ---------------------------------------------------------------------------------


def select(
    data: TraceData, session_id: str | None, name: str | None, last: int | None
) -> list[tuple[str, list[str]]]:
    """Per selected session, the ids of the spans to show as roots (with their descendants).

    ``name`` matches span names exactly or as a glob (``val*``); ``last`` keeps the N most
    recently closed spans (the session root excluded). A span whose ancestor is also picked is
    shown under that ancestor, not twice.
    """
    out = []
    for sid in resolve_sessions(data, session_id):
        ids = data.spans_of(sid)
        if name is None and last is None:
            roots = [sid] if sid in data.spans else [i for i in ids if _is_top(data, i)]
            out.append((sid, roots))
            continue
        picked = [i for i in ids if i != sid]
        if name is not None:
            picked = [i for i in picked if _name_matches(data.spans[i]["name"], name)]
        if last is not None:
            closed = [i for i in picked if not data.is_open(i)]
            closed.sort(
                key=lambda i: (data.spans[i]["end_ns"], -data.spans[i]["start_ns"])
            )  # outer last
            picked = closed[-last:] if last > 0 else []
        chosen = set(picked)
        roots = [i for i in picked if not _has_ancestor_in(data, i, chosen)]
        out.append((sid, sorted(roots, key=lambda i: data.spans[i]["start_ns"])))
    return out


def _is_top(data: TraceData, sid: str) -> bool:
    return data.spans[sid].get("parent_id") not in data.spans


def _name_matches(span_name: str, pattern: str) -> bool:
    return span_name == pattern or fnmatch.fnmatchcase(span_name, pattern)


def _has_ancestor_in(data: TraceData, sid: str, chosen: set[str]) -> bool:
    cur = data.spans[sid].get("parent_id")
    for _ in range(256):  # the depth cap is 64; a cycle in a corrupt spool must not hang us
        if cur is None or cur not in data.spans:
            return False
        if cur in chosen:
            return True
        cur = data.spans[cur].get("parent_id")
    return False


# -- the filtered tree shared by every format --------------------------------------------------


@dataclass
class Node:
    """One span in the tree being rendered."""

    id: str
    span: Record
    depth: int  # absolute: the session root is 0
    children: list[Node] = field(default_factory=list)
    hidden_short: int = 0  # children dropped by min_wall_ns
    hidden_deep: int = 0  # descendants dropped by depth


def build(data: TraceData, root: str, depth: int | None, min_wall_ns: int | None) -> Node:
    """The tree under ``root``, cut at ``depth`` levels below it and without short spans."""
    base = _abs_depth(data, root)

    def grow(sid: str, level: int) -> Node:
        node = Node(sid, data.spans[sid], base + level)
        kids = data.children.get(sid, [])
        if depth is not None and level >= depth:
            node.hidden_deep = _count_below(data, sid)
            return node
        for kid in kids:
            span = data.spans[kid]
            if min_wall_ns is not None and span["end_ns"] - span["start_ns"] < min_wall_ns:
                node.hidden_short += 1
                continue
            node.children.append(grow(kid, level + 1))
        return node

    return grow(root, 0)


def _abs_depth(data: TraceData, sid: str) -> int:
    d, cur = 0, data.spans[sid].get("parent_id")
    session = data.session_of.get(sid)
    while cur is not None and cur in data.spans and d < 256:
        d += 1
        cur = data.spans[cur].get("parent_id")
    if cur is not None and session in data.spans and session != sid:
        d += 1  # an orphan hangs under its session
    return d


def _count_below(data: TraceData, sid: str) -> int:
    stack, n = list(data.children.get(sid, [])), 0
    while stack:
        n += 1
        stack.extend(data.children.get(stack.pop(), []))
    return n


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, pre-order."""
    stack = [node]
    while stack:
        cur = stack.pop()
        yield cur
        stack.extend(reversed(cur.children))


# -- render ------------------------------------------------------------------------------------


def render(
    data: TraceData,
    *,
    session_id: str | None = None,
    format: str = "tree",
    name: str | None = None,
    last: int | None = None,
    depth: int | None = None,
    min_wall_ns: int | None = None,
    color: bool = False,
) -> Any:
    """Render the selected session(s) as ``tree`` text, a ``dict``, ``json`` or a ``df``.

    ``session_id``: None → the newest session, ``"all"``, an id, a unique prefix or a run id.
    ``dict``/``json`` give the session's root node, or a list of nodes when ``name``/``last``
    pick several roots or several sessions are shown. Returns ``str | dict | list | DataFrame``.

    >>> render(TraceData(), format="dict")
    {}
    """
    if format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; valid formats: {', '.join(FORMATS)}")
    if format == "df":
        return _dataframe(data, select(data, session_id, name, last), depth, min_wall_ns)
    picked = select(data, session_id, name, last)
    trees = [(sid, [build(data, r, depth, min_wall_ns) for r in roots]) for sid, roots in picked]
    if format == "tree":
        from cirron.core.trace_tree import tree_text

        return tree_text(data, trees, color=color, min_wall_ns=min_wall_ns)
    nodes = [_node_dict(data, n) for _, roots in trees for n in roots]
    single = name is None and last is None and len(picked) == 1 and len(nodes) == 1
    obj: Any = nodes[0] if single else nodes
    if not picked and session_id is None:
        obj = {}
    return obj if format == "dict" else json.dumps(obj, indent=2, allow_nan=False)


def _node_dict(data: TraceData, node: Node) -> dict[str, Any]:
    span = node.span
    return {
        "id": node.id,
        "name": span["name"],
        "index": span.get("index"),
        "start_ns": span["start_ns"],
        "end_ns": span["end_ns"],
        "duration_ns": span["end_ns"] - span["start_ns"],
        "rank": span.get("rank"),
        "attrs": span.get("attrs", {}),
        "marks": [_mark_dict(m) for m in data.marks_by_span.get(node.id, ())],
        "children": [_node_dict(data, c) for c in node.children],
    }


def _mark_dict(mark: Record) -> dict[str, Any]:
    keys = ("id", "name", "value", "value_type", "kind", "ts_ns", "attrs")
    return {k: mark.get(k) for k in keys}


# -- DataFrame ---------------------------------------------------------------------------------

SPAN_COLUMNS = (
    "span_id", "name", "index", "parent_id", "depth", "start_ns", "end_ns", "duration_ns",
    "session_id", "rank", "open", "attrs",
)  # fmt: skip


def span_rows(
    data: TraceData, picked: list[tuple[str, list[str]]], depth: int | None, min_wall_ns: int | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per shown span (the DataFrame's and the CSV's), and the mark column names."""
    rows: list[dict[str, Any]] = []
    mark_cols: dict[str, None] = {}
    for sid, roots in picked:
        for root in roots:
            for node in walk(build(data, root, depth, min_wall_ns)):
                row = _span_row(data, node, sid)
                for mname, value in _last_mark_values(data, node.id).items():
                    col = f"mark.{mname}" if mname in SPAN_COLUMNS else mname
                    mark_cols[col] = None
                    row[col] = value
                rows.append(row)
    return rows, list(mark_cols)


def _span_row(data: TraceData, node: Node, sid: str) -> dict[str, Any]:
    span = node.span
    parent = span.get("parent_id")
    return {
        "span_id": node.id,
        "name": span["name"],
        "index": span.get("index"),
        "parent_id": parent,
        "depth": node.depth,
        "start_ns": span["start_ns"],
        "end_ns": span["end_ns"],
        "duration_ns": span["end_ns"] - span["start_ns"],
        "session_id": sid,
        "rank": span.get("rank"),
        "open": data.is_open(node.id),
        "attrs": span.get("attrs", {}),
    }


def _last_mark_values(data: TraceData, sid: str) -> dict[str, Any]:
    """Per mark name: the last point value, else the (last) summary value."""
    point: dict[str, Any] = {}
    summ: dict[str, Any] = {}
    for mark in data.marks_by_span.get(sid, ()):
        (point if mark.get("kind", "point") == "point" else summ)[mark["name"]] = mark_value(mark)
    return {**summ, **point}


def _dataframe(
    data: TraceData, picked: list[tuple[str, list[str]]], depth: int | None, min_wall_ns: int | None
) -> pandas.DataFrame:
    try:
        import pandas as pd
    except ImportError:
        raise CirronDependencyError.missing("pandas", "pandas", "ci.trace(format='df')") from None
    rows, mark_cols = span_rows(data, picked, depth, min_wall_ns)
    return pd.DataFrame(rows, columns=[*SPAN_COLUMNS, *mark_cols])


# -- the one-line summary ----------------------------------------------------------------------


def summary(data: TraceData, session_id: str | None = None) -> str:
    """One line about a session (default: the newest), e.g.
    ``3 epochs, 96 batches, mean batch 4.12 ms, data_load 18% of batch time, final loss 0.213``.

    >>> summary(TraceData())
    'no sessions recorded'
    """
    ids = resolve_sessions(data, session_id)
    if not ids:
        return "no sessions recorded"
    lines = [_summary_line(data, sid) for sid in ids]
    return "\n".join(lines)


def _summary_line(data: TraceData, sid: str) -> str:
    spans = [data.spans[i] for i in data.spans_of(sid)]
    epochs = sum(1 for s in spans if s["name"] == "epoch")
    batches = [s for s in spans if s["name"] == "batch" and s["attrs"].get("phase") in TRAIN_PHASES]
    parts = []
    if epochs:
        parts.append(f"{epochs} epoch{'s' * (epochs != 1)}")
    if batches:
        total = sum(s["end_ns"] - s["start_ns"] for s in batches)
        parts.append(f"{len(batches)} batch{'es' * (len(batches) != 1)}")
        parts.append(f"mean batch {fmt_duration(total / len(batches))}")
        load = _data_load_ns(data, batches)
        if load is not None and total > 0:
            parts.append(f"data_load {round(100 * load / total)}% of batch time")
    if not parts:
        parts.append(f"{len(spans)} span{'s' * (len(spans) != 1)}")
    loss = _final(data, sid, "loss")
    if loss is not None:
        parts.append(f"final loss {fmt_value(loss)}")
    status = next((i.status for i in sessions(data) if i.id == sid), "")
    if status and status != "finished":
        parts.append(status)
    return ", ".join(parts)


def _data_load_ns(data: TraceData, batches: list[Record]) -> int | None:
    total, seen = 0, False
    for batch in batches:
        kids = [data.spans[k] for k in data.children.get(batch["id"], ())]
        loads = [k["end_ns"] - k["start_ns"] for k in kids if k["name"] == "data_load"]
        attr = batch["attrs"].get("data_load_ns")
        if loads:
            total, seen = total + sum(loads), True
        elif isinstance(attr, int):
            total, seen = total + attr, True
    return total if seen else None


def _final(data: TraceData, sid: str, mark_name: str) -> Any:
    best: Record | None = None
    for span_id in data.spans_of(sid):
        for mark in data.marks_by_span.get(span_id, ()):
            point = mark["name"] == mark_name and mark.get("kind", "point") == "point"
            if point and (best is None or mark.get("ts_ns", 0) >= best.get("ts_ns", 0)):
                best = mark
    return None if best is None else mark_value(best)


def session_label(data: TraceData, sid: str) -> str:
    """``demo 0.1.0`` style project label of a session, or empty."""
    attrs = data.spans.get(sid, {}).get("attrs", {})
    return " ".join(str(attrs[k]) for k in ("name", "version") if attrs.get(k) is not None)


def is_session(span: Record) -> bool:
    """True for the ``cirron.session`` root span."""
    return span.get("name") == SESSION and span.get("parent_id") is None
