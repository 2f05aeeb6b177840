"""``cirron spool inspect | flush | clear`` on real spool files, against a real HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cirron.cli import spool as spool_cli
from cirron.cli.main import cli
from cirron.core.ledger import Ledger
from tests.helpers.ingest_server import IngestServer, running_server, write_batches

KEY = "cli-key-s3cr3t"


@pytest.fixture
def server() -> Iterator[IngestServer]:
    with running_server(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "work" / ".cirron" / "spool"
    path.mkdir(parents=True)
    return path


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> object:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def test_inspect_shows_header_rows_state_and_oldest_newest(spool: Path) -> None:
    batches = write_batches(spool, 3, snapshots=2)
    Ledger(spool).mark_sent(batches[0]["batch_id"])
    result = run("spool", "inspect")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    size = sum(p.stat().st_size for p in spool.glob("*.json"))
    assert lines[0] == f"Spool: {spool}  (3 files, {size / 1e6:.2f} MB)"
    assert lines[1].split() == ["TIME", "SIZE", "SPANS", "MARKS", "SNAPSHOTS", "STATE", "BATCH"]
    rows = [line.split() for line in lines[2:5]]
    assert [r[3:6] for r in rows] == [["2", "3", "2"]] * 3
    assert [r[6] for r in rows] == ["sent", "pending", "pending"]
    assert [r[7] for r in rows] == [b["batch_id"] for b in batches]
    assert "1 sent, 2 pending" in result.output
    assert lines[-2].startswith("Oldest: ") and batches[0]["batch_id"] in lines[-2]
    assert lines[-1].startswith("Newest: ") and batches[-1]["batch_id"] in lines[-1]


def test_inspect_json_accepts_the_spool_subdir_and_ignores_other_files(spool: Path) -> None:
    batches = write_batches(spool, 2, marks=5)
    (spool / "notes.txt").write_text("not a batch")
    (spool / "00000000000000000001-abc.json.tmp").write_text("{")
    result = run("spool", "inspect", "--dir", str(spool), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["spool"] == str(spool) and doc["files"] == 2 and doc["pending"] == 2
    assert [b["batch_id"] for b in doc["batches"]] == [b["batch_id"] for b in batches]
    assert doc["batches"][0]["marks"] == 5 and doc["batches"][0]["state"] == "pending"
    assert doc["oldest"]["batch_id"] == batches[0]["batch_id"]
    assert doc["newest"]["batch_id"] == batches[1]["batch_id"]


def test_inspect_skips_corrupt_and_unknown_version_files_naming_them(spool: Path) -> None:
    write_batches(spool, 1)
    torn = spool / f"{1:020d}-{'a' * 32}.json"
    torn.write_text('{"schema_version": 1, "spans": [')
    future = spool / f"{2:020d}-{'b' * 32}.json"
    future.write_text('{"schema_version": 2}')
    result = CliRunner().invoke(cli, ["spool", "inspect", "--dir", str(spool.parent)])
    assert result.exit_code == 0
    assert f"skipped {torn}: corrupt or truncated JSON" in result.stderr
    assert f"skipped {future}: unknown schema_version 2" in result.stderr
    assert "(3 files," in result.stdout and "0 sent, 1 pending" in result.stdout
    torn.unlink()
    future.unlink()


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = run("spool", "inspect", "--dir", str(tmp_path / "nope"))
    assert result.exit_code == 1 and "no spool directory at" in result.output
    result = run("spool", "inspect")  # ./.cirron does not exist in the test's directory
    assert result.exit_code == 1 and "pass --dir" in result.output
    assert run("spool", "inspect", "--bogus").exit_code == 2


def test_flush_uploads_pending_batches_and_records_them(server: IngestServer, spool: Path) -> None:
    batches = write_batches(spool, 4)
    Ledger(spool).mark_sent(batches[0]["batch_id"])
    env = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url}
    result = run("spool", "flush", env=env)
    assert result.exit_code == 0, result.output
    assert "Uploaded 3 of 3 pending batches" in result.output
    assert set(server.batches) == {b["batch_id"] for b in batches[1:]}
    assert Ledger(spool).sent_ids() == {b["batch_id"] for b in batches}
    again = run("spool", "flush", env=env)
    assert again.exit_code == 0 and "Nothing to upload: 4 batches" in again.output
    assert len(server.requests) == 3
    assert KEY not in result.output + again.output


def test_flush_retries_transient_faults(server: IngestServer, spool: Path) -> None:
    batches = write_batches(spool, 2)
    server.fail(503, times=1, retry_after=0)
    server.reset(times=1)
    env = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url}
    result = run("spool", "flush", env=env)
    assert result.exit_code == 0, result.output
    assert set(server.batches) == {b["batch_id"] for b in batches}


def test_flush_exits_1_naming_the_batch_the_server_rejected(
    server: IngestServer, spool: Path
) -> None:
    batches = write_batches(spool, 2)
    server.fail(422, times=1)
    env = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url}
    result = run("spool", "flush", env=env)
    assert result.exit_code == 1
    assert "Uploaded 1 of 2" in result.output and "1 batches were not uploaded" in result.output
    assert batches[0]["batch_id"] in result.output and "HTTP 422" in result.output
    assert KEY not in result.output


def test_flush_stops_when_the_server_is_unreachable(server: IngestServer, spool: Path) -> None:
    write_batches(spool, 3)
    server.stop()
    env = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url}
    result = run("spool", "flush", "--retries", "0", env=env)
    assert result.exit_code == 1
    assert "3 batches were not uploaded" in result.output and "not attempted" in result.output
    assert "ConnectionError" in result.output


def test_flush_with_a_wrong_key_says_what_to_check(spool: Path) -> None:
    write_batches(spool, 2)
    with running_server(api_key="another-key") as server:
        result = run(
            "spool", "flush", env={"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url}
        )
        assert len(server.requests) == 1
    assert (
        result.exit_code == 1 and "HTTP 401" in result.output and "CIRRON_API_KEY" in result.output
    )
    assert KEY not in result.output


def test_flush_without_a_key_or_with_plain_http_is_refused(spool: Path) -> None:
    write_batches(spool, 1)
    result = run("spool", "flush")
    assert result.exit_code == 1 and "set CIRRON_API_KEY" in result.output
    result = run(
        "spool", "flush", env={"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": "http://example.com"}
    )
    assert result.exit_code == 1 and "example.com" in result.output and KEY not in result.output


def test_flush_in_a_subprocess_ships_what_a_run_left_behind(
    server: IngestServer, spool: Path
) -> None:
    batches = write_batches(spool, 3)
    env = {**os.environ, "CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url}
    proc = subprocess.run(
        [sys.executable, "-m", "cirron.cli.main", "spool", "flush", "--dir", str(spool.parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(server.batches) == {b["batch_id"] for b in batches}


def test_clear_refuses_without_a_terminal_or_force(spool: Path) -> None:
    write_batches(spool, 2)
    result = run("spool", "clear")
    assert result.exit_code == 1 and "--force" in result.output
    assert len(list(spool.glob("*.json"))) == 2


def test_clear_with_force_deletes_batches_and_the_ledger(spool: Path) -> None:
    batches = write_batches(spool, 2)
    Ledger(spool).mark_sent(batches[0]["batch_id"])
    (spool / "keep.txt").write_text("x")
    result = run("spool", "clear", "--force", "--dir", str(spool.parent))
    assert result.exit_code == 0 and "Deleted 2 batches" in result.output
    assert sorted(p.name for p in spool.iterdir()) == ["keep.txt"]


def test_clear_asks_on_a_terminal(spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_batches(spool, 1)
    monkeypatch.setattr(spool_cli, "stdin_is_terminal", lambda: True)
    result = run("spool", "clear", input="n\n")
    assert result.exit_code == 1 and "Delete 1 batches" in result.output
    assert len(list(spool.glob("*.json"))) == 1
    result = run("spool", "clear", input="y\n")
    assert result.exit_code == 0 and not list(spool.glob("*.json"))
