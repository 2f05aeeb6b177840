"""OTLP/JSON export: the spool's spans as an OpenTelemetry ``ExportTraceServiceRequest``.

The output is what an OpenTelemetry collector's OTLP/HTTP receiver accepts at ``/v1/traces``
with ``Content-Type: application/json`` (the OTLP JSON encoding of the protobuf messages):

* one ``resourceSpans`` entry per session (resource: ``service.name=cirron``, host, pid, rank,
  run id, project name and version), one ``scopeSpans`` with scope ``cirron``;
* ``traceId`` is the session id (32 hex); ``spanId`` is the last 16 hex digits of cirron's
  32-hex span id (the per-thread counter part, unique within a session's process), or, should
  those be all zeros, the first 16; ``parentSpanId`` follows the same rule. The full cirron id
  is kept in the ``cirron.span_id`` attribute. Ids are hex strings, as OTLP/JSON requires;
* 64-bit integers (``startTimeUnixNano``, ``intValue``) are JSON strings (proto3 JSON mapping);
  enums (``kind``, ``status.code``) are integers;
* marks become span events (``name`` = mark name, attribute ``value`` typed, plus
  ``cirron.kind`` and ``cirron.value_type``); a crashed session or a span that recorded an
  exception gets ``status.code`` 2 (error), everything else 1 (ok), an open span 0 (unset).

>>> span_id_of("0123456789abcdef" "fedcba9876543210")
'fedcba9876543210'
"""

from __future__ import annotations

import math
from typing import Any

from cirron._version import __version__
from cirron.core.trace import Record, TraceData
from cirron.core.trace_render import is_session

__all__ = ["SPAN_KIND_INTERNAL", "span_id_of", "to_otlp"]

SPAN_KIND_INTERNAL = 1
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
_BAD_STATUS = ("crashed", "interrupted", "terminated")
_ERROR_KEYS = ("exception", "exception_type", "error")


def span_id_of(cirron_id: str) -> str:
    """The 16-hex OTLP span id of a 32-hex cirron id (documented above)."""
    tail = cirron_id[-16:]
    return tail if tail.strip("0") else cirron_id[:16]


def to_otlp(data: TraceData, session_ids: list[str]) -> dict[str, Any]:
    """An OTLP/JSON ``ExportTraceServiceRequest`` for the given sessions."""
    return {"resourceSpans": [_resource_spans(data, sid) for sid in session_ids]}


def _resource_spans(data: TraceData, sid: str) -> dict[str, Any]:
    root = data.spans.get(sid, {})
    attrs = root.get("attrs", {})
    resource = {
        "service.name": "cirron",
        "service.version": attrs.get("version"),
        "host.name": attrs.get("host"),
        "process.pid": attrs.get("pid", root.get("pid")),
        "telemetry.sdk.name": "cirron",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": attrs.get("sdk_version") or __version__,
        "cirron.session_id": sid,
        "cirron.project.name": attrs.get("name"),
        "cirron.run_id": attrs.get("run_id"),
        "cirron.rank": attrs.get("rank", root.get("rank")),
        "cirron.world_size": attrs.get("world_size"),
        "cirron.framework": attrs.get("framework"),
    }
    return {
        "resource": {"attributes": _attributes(resource)},
        "scopeSpans": [
            {
                "scope": {"name": "cirron", "version": __version__},
                "spans": [_span(data, sid, i) for i in data.spans_of(sid)],
            }
        ],
    }


def _span(data: TraceData, sid: str, span_id: str) -> dict[str, Any]:
    span = data.spans[span_id]
    parent = span.get("parent_id")
    if parent not in data.spans and not is_session(span) and sid in data.spans:
        parent = sid  # an orphan hangs under its session, as in the tree
    extra = {
        "cirron.span_id": span_id,
        "cirron.index": span.get("index"),
        "cirron.rank": span.get("rank"),
        "thread.id": span.get("thread_id"),
        "cirron.gpu_ns": span.get("gpu_ns"),
        "cirron.cpu_ns": span.get("cpu_ns"),
        "cirron.memory_peak_bytes": span.get("memory_peak_bytes"),
    }
    out: dict[str, Any] = {
        "traceId": sid,
        "spanId": span_id_of(span_id),
        "name": span["name"],
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(span["start_ns"]),
        "endTimeUnixNano": str(span["end_ns"]),
        "attributes": _attributes({**span.get("attrs", {}), **extra}),
        "events": [_event(m) for m in data.marks_by_span.get(span_id, ())],
        "status": _status(data, span_id, span),
    }
    if parent:
        out["parentSpanId"] = span_id_of(parent)
    return out


def _event(mark: Record) -> dict[str, Any]:
    value = mark.get("value")
    attrs = {
        "value": value,
        "cirron.kind": mark.get("kind"),
        "cirron.value_type": mark.get("value_type"),
        "cirron.mark_id": mark.get("id"),
    }
    nf = (mark.get("attrs") or {}).get("non_finite")
    if value is None and nf in ("nan", "inf", "-inf"):
        attrs["value"] = float(nf)
    attrs.update({k: v for k, v in (mark.get("attrs") or {}).items() if k not in attrs})
    return {
        "timeUnixNano": str(mark.get("ts_ns", 0)),
        "name": mark["name"],
        "attributes": _attributes(attrs),
    }


def _status(data: TraceData, span_id: str, span: Record) -> dict[str, Any]:
    attrs = span.get("attrs", {})
    if data.is_open(span_id):
        return {"code": STATUS_UNSET, "message": "open: no clean close was recorded"}
    if is_session(span) and attrs.get("status") in _BAD_STATUS:
        return {"code": STATUS_ERROR, "message": str(attrs["status"])}
    for key in _ERROR_KEYS:
        if attrs.get(key):
            return {"code": STATUS_ERROR, "message": str(attrs[key])}
    return {"code": STATUS_OK}


def _attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in values.items() if v is not None]


def _any_value(v: Any) -> dict[str, Any]:
    """An OTLP ``AnyValue`` in its JSON form."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        if math.isfinite(v):
            return {"doubleValue": v}
        return {"doubleValue": "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")}
    if isinstance(v, list | tuple):
        return {"arrayValue": {"values": [_any_value(x) for x in v if x is not None]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": _attributes({str(k): x for k, x in v.items()})}}
    return {"stringValue": str(v)}
