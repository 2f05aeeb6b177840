"""Exports (JSON, CSV, Parquet, OTLP/JSON) and the snapshot table."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from cirron.core.errors import CirronDependencyError
from cirron.core.otel import span_id_of
from cirron.core.trace import AmbiguousSpan, TraceData, export, load_dir, snapshot_table
from tests.helpers.spoolgen import T0, Run, write_training_run


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return write_training_run(tmp_path / ".cirron", epochs=2, batches=4, nan_at=(0, 2))


@pytest.fixture
def data(run: Run) -> TraceData:
    return load_dir(run.root)


SPANS_PER_RUN = 1 + 2 * (1 + 4 * 5 + 3)


def test_unknown_export_format_lists_the_valid_ones(data: TraceData) -> None:
    with pytest.raises(ValueError, match="json, csv, parquet, otel"):
        export(data, "xml")


# -- json ----------------------------------------------------------------------------------


def test_json_export_lists_sessions_spans_marks_and_snapshots(
    run: Run, data: TraceData, tmp_path: Path
) -> None:
    doc = json.loads(export(data, "json"))  # type: ignore[arg-type]
    assert doc["format"] == "cirron-trace-export" and doc["schema_version"] == 1
    assert [s["id"] for s in doc["sessions"]] == [run.session_id]
    assert len(doc["spans"]) == SPANS_PER_RUN
    assert {s["id"] for s in doc["spans"]} == set(data.spans)
    assert len(doc["marks"]) == len(data.marks) == 2 * 4 + 2 * 2
    assert len(doc["snapshots"]) == 6
    nan = [m for m in doc["marks"] if m["value"] is None]
    assert nan and nan[0]["attrs"] == {"non_finite": "nan"}
    out = tmp_path / "trace.json"
    assert export(data, "json", output=out) == [out]
    assert json.loads(out.read_text()) == doc


def test_json_export_of_one_session_leaves_the_others_out(tmp_path: Path) -> None:
    root = tmp_path / ".cirron"
    a = write_training_run(root, epochs=1, batches=2, seed=1)
    b = write_training_run(root, epochs=1, batches=2, seed=2, start_ns=T0 + 10**12)
    data = load_dir(root)
    doc = json.loads(export(data, "json", session_id=a.session_id[:8]))  # type: ignore[arg-type]
    assert {s["session_id"] for s in doc["spans"]} == {a.session_id}
    assert len(json.loads(export(data, "json"))["sessions"]) == 2  # type: ignore[arg-type]
    assert b.session_id not in json.dumps(doc)


# -- csv -----------------------------------------------------------------------------------


def test_csv_round_trips_one_row_per_span_with_attrs_and_marks(run: Run, data: TraceData) -> None:
    rows = list(csv.DictReader(io.StringIO(export(data, "csv"))))  # type: ignore[arg-type]
    assert len(rows) == SPANS_PER_RUN
    by_id = {r["span_id"]: r for r in rows}
    for sid, span in data.spans.items():
        assert int(by_id[sid]["duration_ns"]) == span["end_ns"] - span["start_ns"]
    session = by_id[run.session_id]
    assert (
        session["attr.name"] == "demo"
        and session["attr.status"] == "finished"
        and session["depth"] == "0"
    )
    first_batch = by_id[run.batch_ids[0][0]]
    assert float(first_batch["mark.loss"]) == pytest.approx(run.losses[0])
    assert first_batch["index"] == "0" and first_batch["open"] == "false"
    validation = [r for r in rows if r["attr.phase"] == "validation"]
    assert len(validation) == 4
    epoch = by_id[run.epoch_ids[1]]
    assert float(epoch["mark.val_acc"]) == pytest.approx(0.75)


def test_csv_to_a_file_writes_the_marks_beside_it(data: TraceData, tmp_path: Path) -> None:
    out = tmp_path / "spans.csv"
    written = export(data, "csv", output=out)
    assert written == [out, tmp_path / "spans.marks.csv"]
    marks = list(csv.DictReader(io.StringIO((tmp_path / "spans.marks.csv").read_text())))
    assert len(marks) == len(data.marks)
    assert {m["name"] for m in marks} == {"loss", "val_acc", "lr"}
    assert any(m["value"] == "nan" for m in marks)
    assert all(m["span_id"] in data.spans for m in marks)


# -- parquet -------------------------------------------------------------------------------


def test_parquet_round_trips_spans_and_typed_marks(
    run: Run, data: TraceData, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "t.parquet"
    assert export(data, "parquet", output=out) == [out, tmp_path / "t.marks.parquet"]
    spans = pq.read_table(out).to_pylist()
    assert len(spans) == SPANS_PER_RUN
    by_id = {r["span_id"]: r for r in spans}
    assert by_id[run.session_id]["attr.status"] == "finished"
    assert by_id[run.batch_ids[0][0]]["mark.loss"] == pytest.approx(run.losses[0])
    marks = pq.read_table(tmp_path / "t.marks.parquet").to_pylist()
    assert len(marks) == len(data.marks)
    loss = [m for m in marks if m["name"] == "loss"]
    assert sum(1 for m in loss if math.isnan(m["value_float"])) == 1
    assert all(m["value_string"] is None for m in marks)


def test_parquet_needs_an_output_path(data: TraceData) -> None:
    with pytest.raises(ValueError, match="--output"):
        export(data, "parquet")


def test_parquet_without_pyarrow_names_the_pip_line(
    data: TraceData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(CirronDependencyError) as exc:
        export(data, "parquet", output=tmp_path / "x.parquet")
    assert exc.value.pip_line == "pip install 'cirron-sdk[parquet]'"


# -- OTLP/JSON -----------------------------------------------------------------------------

HEX16 = re.compile(r"^[0-9a-f]{16}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _attrs(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["key"]: a["value"] for a in items}


def test_otlp_is_one_resource_per_session_with_service_and_host(run: Run, data: TraceData) -> None:
    doc = json.loads(export(data, "otel"))  # type: ignore[arg-type]
    [rs] = doc["resourceSpans"]
    res = _attrs(rs["resource"]["attributes"])
    assert res["service.name"] == {"stringValue": "cirron"}
    assert res["host.name"] == {"stringValue": "node-0"}
    assert res["process.pid"] == {"intValue": "4242"}
    assert res["cirron.session_id"] == {"stringValue": run.session_id}
    [ss] = rs["scopeSpans"]
    assert ss["scope"]["name"] == "cirron" and ss["scope"]["version"]
    assert len(ss["spans"]) == SPANS_PER_RUN


def test_otlp_spans_have_valid_ids_parent_links_and_string_int64s(
    run: Run, data: TraceData
) -> None:
    spans = json.loads(export(data, "otel"))["resourceSpans"][0]["scopeSpans"][0]["spans"]  # type: ignore[arg-type]
    ids = {s["spanId"] for s in spans}
    assert len(ids) == len(spans)
    for s in spans:
        assert HEX32.match(s["traceId"]) and s["traceId"] == run.session_id
        assert HEX16.match(s["spanId"]) and s["spanId"] != "0" * 16
        assert s["kind"] == 1
        assert isinstance(s["startTimeUnixNano"], str) and isinstance(s["endTimeUnixNano"], str)
        assert int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"])
        assert s["status"]["code"] in (0, 1, 2)
        attrs = _attrs(s["attributes"])
        assert span_id_of(attrs["cirron.span_id"]["stringValue"]) == s["spanId"]
        if s["name"] == "cirron.session":
            assert "parentSpanId" not in s
        else:
            assert s["parentSpanId"] in ids
        for value in attrs.values():
            assert len(value) == 1
            if "intValue" in value:
                assert isinstance(value["intValue"], str)
    by_name = {s["name"]: s for s in spans}
    epoch = next(s for s in spans if s["name"] == "epoch")
    assert epoch["parentSpanId"] == by_name["cirron.session"]["spanId"]
    assert _attrs(epoch["attributes"])["cirron.index"] == {"intValue": "0"}


def test_otlp_events_carry_the_marks(run: Run, data: TraceData) -> None:
    spans = json.loads(export(data, "otel"))["resourceSpans"][0]["scopeSpans"][0]["spans"]  # type: ignore[arg-type]
    events = [e for s in spans for e in s["events"]]
    assert len(events) == len(data.marks)
    loss = [e for e in events if e["name"] == "loss"]
    assert all(isinstance(e["timeUnixNano"], str) for e in events)
    values = [_attrs(e["attributes"])["value"] for e in loss]
    assert {"doubleValue": "NaN"} in values
    first = next(s for s in spans if s["spanId"] == span_id_of(run.batch_ids[0][0]))
    assert _attrs(first["events"][0]["attributes"])["value"] == {
        "doubleValue": pytest.approx(run.losses[0])
    }
    val_acc = next(e for e in events if e["name"] == "val_acc")
    assert _attrs(val_acc["attributes"])["cirron.kind"] == {"stringValue": "summary"}


def test_otlp_status_marks_crashes_and_open_spans(tmp_path: Path) -> None:
    root = tmp_path / ".cirron"
    write_training_run(root, epochs=1, batches=2, status="crashed", seed=1)
    write_training_run(
        root, epochs=2, batches=3, status=None, seed=2, start_ns=T0 + 10**12, per_file=12
    )
    doc = json.loads(export(load_dir(root), "otel"))  # type: ignore[arg-type]
    crashed, killed = (rs["scopeSpans"][0]["spans"] for rs in doc["resourceSpans"])
    session = next(s for s in crashed if s["name"] == "cirron.session")
    assert session["status"] == {"code": 2, "message": "crashed"}
    open_session = next(s for s in killed if s["name"] == "cirron.session")
    assert open_session["status"]["code"] == 0
    assert _attrs(open_session["attributes"])["open"] == {"boolValue": True}


def test_span_id_of_takes_the_counter_half_and_never_returns_zeros() -> None:
    assert span_id_of("abcdef0123456789" + "0000010000000007") == "0000010000000007"
    assert span_id_of("abcdef0123456789" + "0" * 16) == "abcdef0123456789"


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_table_lists_stats_per_epoch(run: Run, data: TraceData) -> None:
    rows = snapshot_table(data)
    assert [(r["epoch"], r["kind"], r["tensor"]) for r in rows] == [
        (0, "weights", "fc1.bias"),
        (0, "weights", "fc1.weight"),
        (0, "gradients", "fc1.weight.grad"),
        (1, "weights", "fc1.bias"),
        (1, "weights", "fc1.weight"),
        (1, "gradients", "fc1.weight.grad"),
    ]
    first = rows[1]
    assert first["shape"] == [4, 3] and first["dtype"] == "float32"
    assert {k: first[k] for k in ("mean", "std", "min", "max", "norm")} == {
        "mean": 0.0, "std": 0.5, "min": -1.0, "max": 1.0, "norm": 2.0,
    }  # fmt: skip
    assert rows[0]["blob"] is None
    assert rows[4]["blob"].startswith("file://") and rows[4]["blob"].endswith("weights.safetensors")


def test_snapshot_table_for_one_epoch_span_by_prefix(run: Run, data: TraceData) -> None:
    rows = snapshot_table(data, run.epoch_ids[1])
    assert {r["span_id"] for r in rows} == {run.epoch_ids[1]} and len(rows) == 3
    assert snapshot_table(data, "ffffffff") == []


def test_snapshot_span_lookup_by_suffix_and_shared_prefix_is_ambiguous(
    run: Run, data: TraceData
) -> None:
    assert {r["epoch"] for r in snapshot_table(data, run.epoch_ids[0][-5:])} == {0}
    with pytest.raises(AmbiguousSpan) as exc:
        snapshot_table(data, run.epoch_ids[0][:16])  # one process: every id starts the same
    assert exc.value.matches == sorted(run.epoch_ids)
