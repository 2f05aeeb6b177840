"""Exporting a spool's sessions: JSON, CSV, Parquet and OTLP/JSON, and the snapshot table.

>>> from cirron.core.trace import TraceData
>>> export(TraceData(), "json")[:1]
'{'

CSV and Parquet hold one row per span (``attr.<key>`` and ``mark.<name>`` columns, the mark
column holding the span's last point value, else its summary value). Written to a file, they
get a second file beside it, ``<stem>.marks.<ext>``, with one row per mark.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from cirron.core.errors import CirronDependencyError
from cirron.core.trace import AmbiguousSpan, Record, TraceData, resolve_sessions, sessions
from cirron.core.trace_render import mark_value, select, span_rows

__all__ = ["EXPORT_FORMATS", "export", "snapshot_table"]

EXPORT_FORMATS = ("json", "csv", "parquet", "otel")


def export(
    data: TraceData, format: str, *, session_id: str | None = "all", output: Path | None = None
) -> str | list[Path]:
    """Export the selected sessions (default: all) as ``json``, ``csv``, ``parquet`` or ``otel``.

    Without ``output`` the text is returned (``parquet`` needs ``output``); with it the file(s)
    are written and their paths returned.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}"
        )
    ids = resolve_sessions(data, session_id)
    if format == "parquet":
        if output is None:
            raise ValueError("parquet export needs an output path (--output FILE.parquet)")
        return _parquet(data, ids, Path(output))
    if format == "csv":
        return _csv(data, ids, output)
    if format == "json":
        text = json.dumps(_json_doc(data, ids), indent=2, allow_nan=False)
    else:
        from cirron.core.otel import to_otlp

        text = json.dumps(to_otlp(data, ids), indent=2, allow_nan=False)
    if output is None:
        return text
    Path(output).write_text(text + "\n", encoding="utf-8")
    return [Path(output)]


# -- json --------------------------------------------------------------------------------------


def _json_doc(data: TraceData, ids: list[str]) -> dict[str, Any]:
    span_ids = [s for sid in ids for s in data.spans_of(sid)]
    wanted = set(span_ids)
    return {
        "format": "cirron-trace-export",
        "schema_version": 1,
        "sessions": [i.as_dict() for i in sessions(data) if i.id in set(ids)],
        "spans": [data.spans[s] for s in span_ids],
        "marks": [m for s in span_ids for m in data.marks_by_span.get(s, ())],
        "snapshots": [r for r in data.snapshots.values() if r["span_id"] in wanted],
    }


# -- flat tables (csv, parquet) ----------------------------------------------------------------


def span_table(data: TraceData, ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Flat span rows (attrs flattened to ``attr.<key>``, marks to ``mark.<name>``) and columns."""
    picked = [(sid, roots) for sid, roots in select(data, "all", None, None) if sid in ids]
    rows, mark_cols = span_rows(data, picked, None, None)
    base = [c for c in rows[0] if c != "attrs" and c not in mark_cols] if rows else []
    attr_cols: dict[str, None] = {}
    flat = []
    for row in rows:
        out = {k: row.get(k) for k in base}
        for key, value in row["attrs"].items():
            attr_cols[f"attr.{key}"] = None
            out[f"attr.{key}"] = _scalar(value)
        for col in mark_cols:
            out[f"mark.{col.removeprefix('mark.')}"] = row.get(col)
        flat.append(out)
    marks = [f"mark.{c.removeprefix('mark.')}" for c in mark_cols]
    return flat, [*base, *sorted(attr_cols), *marks]


def mark_table(data: TraceData, ids: list[str]) -> list[dict[str, Any]]:
    """One row per mark of the selected sessions."""
    rows = []
    for sid in ids:
        for span_id in data.spans_of(sid):
            for m in data.marks_by_span.get(span_id, ()):
                rows.append(
                    {
                        "mark_id": m["id"],
                        "span_id": span_id,
                        "session_id": sid,
                        "name": m["name"],
                        "kind": m.get("kind"),
                        "value_type": m.get("value_type"),
                        "value": mark_value(m),
                        "ts_ns": m.get("ts_ns"),
                        "attrs": json.dumps(m.get("attrs") or {}, sort_keys=True),
                    }
                )
    return rows


def _scalar(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def _csv(data: TraceData, ids: list[str], output: Path | None) -> str | list[Path]:
    rows, cols = span_table(data, ids)
    text = _csv_text(rows, cols)
    if output is None:
        return text
    out = Path(output)
    out.write_text(text, encoding="utf-8")
    marks_path = out.with_name(f"{out.stem}.marks{out.suffix or '.csv'}")
    marks = mark_table(data, ids)
    mark_cols = [
        "mark_id",
        "span_id",
        "session_id",
        "name",
        "kind",
        "value_type",
        "value",
        "ts_ns",
        "attrs",
    ]
    marks_path.write_text(_csv_text(marks, mark_cols), encoding="utf-8")
    return [out, marks_path]


def _csv_text(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in cols})
    return buf.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _parquet(data: TraceData, ids: list[str], output: Path) -> list[Path]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CirronDependencyError.missing("pyarrow", "parquet", "Parquet export") from None
    rows, cols = span_table(data, ids)
    pq.write_table(pa.table(_columns(rows, cols)), output)
    marks = mark_table(data, ids)
    for row in marks:
        row.update(_typed_value(row.pop("value")))
    mark_cols = ["mark_id", "span_id", "session_id", "name", "kind", "value_type",
                 "value_float", "value_int", "value_string", "value_bool", "ts_ns", "attrs"]  # fmt: skip
    marks_path = output.with_name(f"{output.stem}.marks{output.suffix or '.parquet'}")
    pq.write_table(pa.table(_columns(marks, mark_cols)), marks_path)
    return [output, marks_path]


def _columns(rows: list[dict[str, Any]], cols: list[str]) -> dict[str, list[Any]]:
    """Column lists with one Arrow-friendly type each: mixed types fall back to strings."""
    out = {}
    for col in cols:
        values = [r.get(col) for r in rows]
        kinds = {_kind(v) for v in values if v is not None}
        if kinds == {"int", "float"}:
            values = [None if v is None else float(v) for v in values]
        elif len(kinds) > 1:
            values = [None if v is None else str(v) for v in values]
        out[col] = values
    return out


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    return "float" if isinstance(v, float) else "str"


def _typed_value(value: Any) -> dict[str, Any]:
    kind = None if value is None else _kind(value)
    return {
        "value_float": float(value) if kind in ("float", "int") else None,
        "value_int": value if kind == "int" else None,
        "value_string": value if kind == "str" else None,
        "value_bool": value if kind == "bool" else None,
    }


# -- snapshots ---------------------------------------------------------------------------------


def snapshot_table(
    data: TraceData, span_id: str | None = None, session_id: str | None = None
) -> list[dict[str, Any]]:
    """Per-epoch weight and gradient statistics, one row per tensor.

    ``span_id`` (an epoch span id, or a unique prefix or suffix of one) picks one epoch;
    otherwise every snapshot of the session (default: the newest) is listed, by epoch, then
    weights before gradients.
    """
    if span_id is not None:
        one = _match_span(sorted({r["span_id"] for r in data.snapshots.values()}), span_id)
        recs = [r for r in data.snapshots.values() if r["span_id"] == one]
    else:
        wanted = {s for sid in resolve_sessions(data, session_id) for s in data.spans_of(sid)}
        recs = [r for r in data.snapshots.values() if r["span_id"] in wanted]
    rows = [_snapshot_row(data, r) for r in recs]
    rows.sort(key=lambda r: (r["_start"], r["span_id"], r["kind"] == "gradients", r["tensor"]))
    for row in rows:
        del row["_start"]
    return rows


def _match_span(ids: list[str], ref: str) -> str | None:
    """The id equal to ``ref``, else the one it starts or ends (ids of one process share their
    first 16 digits, so the tail is what tells two spans apart)."""
    ref = ref.lower()
    if ref in ids:
        return ref
    found = [i for i in ids if i.startswith(ref) or i.endswith(ref)]
    if len(found) > 1:
        raise AmbiguousSpan(f"span {ref!r} is ambiguous; it matches: {', '.join(found)}", found)
    return found[0] if found else None


def _snapshot_row(data: TraceData, rec: Record) -> dict[str, Any]:
    span = data.spans.get(rec["span_id"], {})
    stats = rec.get("stats") or {}
    kind = "gradients" if str(rec.get("tensor_name", "")).endswith(".grad") else "weights"
    return {
        "_start": span.get("start_ns", 0),
        "epoch": span.get("index"),
        "span_id": rec["span_id"],
        "kind": kind,
        "tensor": rec.get("tensor_name"),
        "shape": list(rec.get("shape") or []),
        "dtype": rec.get("dtype"),
        "mode": rec.get("mode"),
        **{k: _stat(stats.get(k)) for k in ("mean", "std", "min", "max", "norm")},
        "blob": rec.get("blob_uri") or _local_blob(data, rec["span_id"], kind),
    }


def _stat(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _local_blob(data: TraceData, span_id: str, kind: str) -> str | None:
    if data.root is None:
        return None
    path = data.root / "snapshots" / span_id / f"{kind}.safetensors"
    return str(path) if path.is_file() else None
