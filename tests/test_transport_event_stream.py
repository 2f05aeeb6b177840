"""The event_stream transport: one JSON line per sealed batch and per blob, on stdout."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from cirron.core.transport import EventStreamTransport, FileOnlyTransport
from tests.helpers.ingest_server import make_batch
from tests.helpers.schema import validate_batch


def events(text: str) -> list[dict[str, object]]:
    return [
        json.loads(line) for line in text.splitlines() if line.startswith('{"__cirron_event__"')
    ]


def test_each_batch_and_blob_is_one_valid_json_line_whose_payload_validates(tmp_path: Path) -> None:
    out = io.StringIO()
    transport = EventStreamTransport(stdout=out, sdk_version="0.0.0-test")
    transport.start()
    batches = [make_batch(snapshots=1) for _ in range(3)]
    for batch in batches:
        transport.on_batch(None, batch)
    blob = tmp_path / "snapshots" / ("ab" * 16) / "weights.safetensors"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x" * 42)
    transport.on_blob(blob, "ab" * 16)
    transport.close(2.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    parsed = [json.loads(line) for line in lines]
    for record, batch in zip(parsed[:3], batches, strict=True):
        assert record["__cirron_event__"] == "trace_batch"
        assert record["schema_version"] == 1 and record["sdk_version"] == "0.0.0-test"
        assert record["payload"] == batch
        validate_batch(record["payload"])  # type: ignore[arg-type]
    assert parsed[3] == {
        "__cirron_event__": "snapshot_blob",
        "schema_version": 1,
        "sdk_version": "0.0.0-test",
        "payload": {
            "span_id": "ab" * 16,
            "file": "weights.safetensors",
            "path": str(blob),
            "bytes": 42,
        },
    }
    health = transport.health()
    assert health["transport"] == "event_stream" and health["batches_sent"] == 3
    assert health["batches_pending"] == 0


def test_an_unterminated_user_line_in_a_redirected_file_is_ended_first(tmp_path: Path) -> None:
    with open(tmp_path / "stdout.log", "w") as out:
        out.write("epoch 1 loss=")  # the user's print(..., end="")
        transport = EventStreamTransport(stdout=out, sdk_version="0.0.0-test")
        transport.start()
        transport.on_batch(None, make_batch())
        transport.close(2.0)
        out.write("0.5\n")
    lines = (tmp_path / "stdout.log").read_text().splitlines()
    assert lines[0] == "epoch 1 loss="
    assert json.loads(lines[1])["__cirron_event__"] == "trace_batch"
    assert lines[2] == "0.5"


def test_a_terminated_user_line_gets_no_blank_line(tmp_path: Path) -> None:
    with open(tmp_path / "stdout.log", "w") as out:
        out.write("hello\n")
        transport = EventStreamTransport(stdout=out, sdk_version="0.0.0-test")
        transport.start()
        transport.on_batch(None, make_batch())
        transport.close(2.0)
    lines = (tmp_path / "stdout.log").read_text().splitlines()
    assert lines[0] == "hello" and json.loads(lines[1])["__cirron_event__"] == "trace_batch"
    assert len(lines) == 2


def test_events_never_split_lines_written_whole_by_other_threads() -> None:
    out = io.StringIO()
    transport = EventStreamTransport(stdout=out, sdk_version="0.0.0-test")
    transport.start()

    def user() -> None:
        for i in range(500):
            out.write(f"user line {i}\n")  # one write per line, as logging handlers do

    thread = threading.Thread(target=user)
    thread.start()
    for _ in range(50):
        transport.on_batch(None, make_batch(marks=20))
    thread.join()
    transport.close(5.0)
    lines = out.getvalue().splitlines()
    assert len(events(out.getvalue())) == 50
    assert all(line.startswith(("user line ", '{"__cirron_event__"')) for line in lines)
    assert len(lines) == 550


def test_close_is_bounded_and_idempotent_and_drops_nothing_queued_before_it() -> None:
    out = io.StringIO()
    transport = EventStreamTransport(stdout=out, sdk_version="0.0.0-test")
    for _ in range(5):
        transport.on_batch(None, make_batch())  # queued before start
    transport.start()
    transport.close(2.0)
    transport.close(2.0)
    transport.on_batch(None, make_batch())  # after close: ignored
    assert len(events(out.getvalue())) == 5


def test_a_closed_stdout_is_counted_not_raised() -> None:
    out = io.StringIO()
    out.close()
    transport = EventStreamTransport(stdout=out, sdk_version="0.0.0-test")
    transport.start()
    transport.on_batch(None, make_batch())
    transport.close(2.0)
    health = transport.health()
    assert health["batches_failed"] == 1 and "closed" in str(health["last_error"])


def test_file_only_is_a_no_op_with_the_same_health_keys(tmp_path: Path) -> None:
    transport = FileOnlyTransport()
    transport.start()
    transport.on_batch(None, make_batch())
    transport.on_blob(tmp_path / "x", "ab" * 16)
    transport.close(0.0)
    assert transport.health() == {
        "transport": "file_only",
        "batches_sent": 0,
        "batches_retried": 0,
        "batches_failed": 0,
        "batches_pending": 0,
        "last_http_status": None,
        "last_error": None,
        "paused": False,
    }
