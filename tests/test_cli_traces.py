"""``cirron traces``: what a user sees and the exit codes, through click's runner and one real
subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cirron.cli.traces import traces
from tests.helpers.spoolgen import (
    T0,
    Run,
    write_corrupt,
    write_future_version,
    write_training_run,
    write_truncated,
)

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(traces, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def run(_isolated: Path) -> Run:
    """One finished session in ./.cirron (the default --dir)."""
    return write_training_run(Path(".cirron"), epochs=3, batches=32)


@pytest.fixture
def broken() -> Iterator[list[Path]]:
    paths: list[Path] = []
    yield paths
    for p in paths:
        p.unlink(missing_ok=True)


# -- list ----------------------------------------------------------------------------------


def test_list_shows_one_row_per_session(run: Run) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    header, row = [line for line in result.stdout.splitlines() if line.strip() and "──" not in line]
    for col in ("SESSION", "START", "DURATION", "STATUS", "RANKS", "SPANS", "PROJECT"):
        assert col in header
    assert (
        row.split()[:2] == [run.session_id[:12], "2023-11-14T22:13:20+00:00"]
        or run.session_id[:12] in row
    )
    assert "415 ms" in row and "finished" in row and "demo 0.1.0" in row
    assert " 493 " in row


def test_list_groups_the_ranks_of_one_run_and_flags_a_killed_session(_isolated: Path) -> None:
    root = Path(".cirron")
    write_training_run(root, epochs=1, batches=2, seed=1, rank=0, world_size=2, run_id="job-42")
    write_training_run(
        root, epochs=1, batches=2, seed=1, rank=1, world_size=2, run_id="job-42", start_ns=T0 + 5
    )
    killed = write_training_run(
        root, epochs=1, batches=8, seed=2, start_ns=T0 + 10**12, status=None, per_file=20
    )
    result = cli("list")
    assert result.exit_code == 0
    lines = [
        line
        for line in result.stdout.splitlines()
        if "job-42" in line or killed.session_id[:12] in line
    ]
    assert len(lines) == 2
    assert "0,1" in lines[0] and "finished" in lines[0]
    assert "unknown (no clean exit)" in lines[1]
    doc = json.loads(cli("list", "--json").stdout)
    assert [r["ranks"] for r in doc] == [[0, 1], [0]]
    assert doc[0]["run_id"] == "job-42" and len(doc[0]["sessions"]) == 2
    assert doc[1]["sessions"][0]["id"] == killed.session_id


def test_list_of_an_empty_spool_says_so(_isolated: Path) -> None:
    Path(".cirron/spool").mkdir(parents=True)
    result = cli("list")
    assert result.exit_code == 0 and "No sessions" in result.stdout
    assert json.loads(cli("list", "--json").stdout) == []


def test_a_missing_directory_is_a_clear_error(_isolated: Path) -> None:
    result = cli("list", "--dir", "nowhere")
    assert result.exit_code == 1
    assert "no such directory: nowhere" in result.stderr
    assert cli("view").exit_code == 1  # no ./.cirron either
    Path("empty").mkdir()
    bad = cli("view", "--dir", "empty")
    assert bad.exit_code == 1 and "no spool under empty" in bad.stderr


def test_dir_accepts_the_spool_directory_copied_from_elsewhere(
    tmp_path: Path, _isolated: Path
) -> None:
    elsewhere = tmp_path / "copied" / "spool"
    run = write_training_run(tmp_path / "orig", epochs=1, batches=2)
    elsewhere.mkdir(parents=True)
    for f in (tmp_path / "orig" / "spool").iterdir():
        (elsewhere / f.name).write_bytes(f.read_bytes())
    result = cli("list", "--dir", str(elsewhere))
    assert result.exit_code == 0 and run.session_id[:12] in result.stdout


# -- broken files --------------------------------------------------------------------------


def test_corrupt_and_future_files_are_warned_about_and_the_rest_shown(
    run: Run, broken: list[Path]
) -> None:
    spool = Path(".cirron/spool")
    broken += [
        write_corrupt(spool, T0 + 1),
        write_truncated(spool, T0 + 2),
        write_future_version(spool, T0 + 3),
    ]
    for args in (["list"], ["view"], ["export", "--format", "json"], ["snapshots"]):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
        for path in broken:
            assert path.name in result.stderr
        assert "schema_version 2" in result.stderr
        assert run.session_id[:8] in result.stdout or args == ["snapshots"]


# -- view ----------------------------------------------------------------------------------


def test_view_prints_the_tree_without_colour_off_a_terminal(run: Run) -> None:
    result = cli("view")
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith(f"cirron.session  {run.session_id[:8]}  demo 0.1.0")
    assert "epoch[0]" in out and "… 27 more batch spans" in out and "loss: last" in out
    assert "\x1b[" not in out


def test_view_filters(run: Run) -> None:
    by_name = cli("view", "--name", "validation").stdout
    assert by_name.count("── validation") == 3 and "epoch[" not in by_name
    last = cli("view", "--last", "1").stdout
    assert "epoch[2]" in last and "epoch[1]" not in last
    shallow = cli("view", "--depth", "1").stdout
    assert len(shallow.splitlines()) == 4
    fast = cli("view", "--min-wall", "1.5ms").stdout
    assert "optimizer_step" not in fast and "under 1.50 ms hidden" in fast


def test_view_colour_is_forced_or_refused(run: Run) -> None:
    assert "\x1b[" in cli("view", "--color").stdout
    assert "\x1b[" not in cli("view", "--no-color").stdout


def test_view_json_is_the_nested_dict(run: Run) -> None:
    doc = json.loads(cli("view", "--json").stdout)
    assert doc["id"] == run.session_id and len(doc["children"]) == 3
    epochs = json.loads(cli("view", "--json", "--name", "epoch", "--depth", "0").stdout)
    assert [e["index"] for e in epochs] == [0, 1, 2] and all(e["children"] == [] for e in epochs)


def test_view_session_selection_and_its_errors(_isolated: Path) -> None:
    root = Path(".cirron")
    runs = [
        write_training_run(root, epochs=1, batches=2, seed=s, start_ns=T0 + s * 10**12)
        for s in range(3)
    ]
    out = cli("view", "--session", runs[0].session_id[:10]).stdout
    assert runs[0].session_id[:8] in out and runs[2].session_id[:8] not in out
    every = cli("view", "--session", "all").stdout
    assert all(r.session_id[:8] in every for r in runs)
    missing = cli("view", "--session", "zzz")
    assert missing.exit_code == 1 and "no session matches 'zzz'" in missing.stderr
    for i in (1, 2):
        write_training_run(
            root,
            epochs=1,
            batches=2,
            seed=10 + i,
            start_ns=T0 + (5 + i) * 10**12,
            run_id=f"job-{i}",
        )
    ambiguous = cli("view", "--session", "job-")
    assert ambiguous.exit_code == 1 and "ambiguous" in ambiguous.stderr
    assert "job-1" in ambiguous.stderr and "job-2" in ambiguous.stderr
    assert "job-2" not in cli("view", "--session", "job-1", "--json").stdout


def test_bad_usage_exits_2(run: Run) -> None:
    assert cli("view", "--last", "0").exit_code == 2
    assert cli("view", "--depth", "-1").exit_code == 2
    bad = cli("view", "--min-wall", "soon")
    assert bad.exit_code == 2 and "not a duration" in bad.stderr
    assert cli("export").exit_code == 2
    assert cli("export", "--format", "xml").exit_code == 2
    assert cli("nonsense").exit_code == 2


# -- export --------------------------------------------------------------------------------


def test_export_json_and_otel_to_stdout(run: Run) -> None:
    doc = json.loads(cli("export", "--format", "json").stdout)
    assert doc["sessions"][0]["id"] == run.session_id and len(doc["spans"]) == 493
    otlp = json.loads(cli("export", "--format", "otel").stdout)
    spans = otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert len(spans) == 493 and spans[0]["traceId"] == run.session_id


def test_export_csv_to_stdout_and_to_files(run: Run) -> None:
    rows = list(csv.DictReader(io.StringIO(cli("export", "--format", "csv").stdout)))
    assert len(rows) == 493
    result = cli("export", "--format", "csv", "--output", "out.csv")
    assert result.exit_code == 0 and "out.csv" in result.stderr and result.stdout == ""
    assert len(list(csv.DictReader(io.StringIO(Path("out.csv").read_text())))) == 493
    assert Path("out.marks.csv").is_file()


def test_export_parquet_needs_output_and_pyarrow(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = cli("export", "--format", "parquet")
    assert usage.exit_code == 2 and "--output" in usage.stderr
    ok = cli("export", "--format", "parquet", "-o", "t.parquet")
    assert ok.exit_code == 0 and Path("t.parquet").is_file() and Path("t.marks.parquet").is_file()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    missing = cli("export", "--format", "parquet", "-o", "u.parquet")
    assert missing.exit_code == 1 and "pip install 'cirron-sdk[parquet]'" in missing.stderr


def test_export_one_session(_isolated: Path) -> None:
    a = write_training_run(Path(".cirron"), epochs=1, batches=2, seed=1)
    write_training_run(Path(".cirron"), epochs=1, batches=2, seed=2, start_ns=T0 + 10**12)
    doc = json.loads(cli("export", "--format", "json", "--session", a.session_id[:8]).stdout)
    assert [s["id"] for s in doc["sessions"]] == [a.session_id]
    assert cli("export", "--format", "json", "--session", "nope").exit_code == 1


# -- snapshots -----------------------------------------------------------------------------


def test_snapshots_table_and_json(run: Run) -> None:
    result = cli("snapshots")
    assert result.exit_code == 0
    out = result.stdout
    for col in ("EPOCH", "KIND", "TENSOR", "SHAPE", "MEAN", "STD", "MIN", "MAX", "NORM", "BLOB"):
        assert col in out
    assert out.count("fc1.weight.grad") == 3 and "4x3" in out and "weights.safetensors" in out
    rows = json.loads(cli("snapshots", "--json").stdout)
    assert len(rows) == 9 and rows[0]["epoch"] == 0
    one = json.loads(cli("snapshots", run.epoch_ids[2][-6:], "--json").stdout)
    assert {r["epoch"] for r in one} == {2}
    ambiguous = cli("snapshots", run.epoch_ids[2][:16])
    assert ambiguous.exit_code == 1 and run.epoch_ids[0] in ambiguous.stderr
    missing = cli("snapshots", "ffffffffffff")
    assert missing.exit_code == 1 and "no snapshots" in missing.stderr


def test_snapshots_of_a_run_without_any(_isolated: Path) -> None:
    write_training_run(Path(".cirron"), epochs=1, batches=2, snapshots=False)
    result = cli("snapshots")
    assert result.exit_code == 0 and "No snapshots" in result.stdout


# -- a real process ------------------------------------------------------------------------


def test_the_cirron_command_views_a_spool_in_a_subprocess(run: Run) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cirron.cli.main", "traces", "view", "--depth", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"cirron.session  {run.session_id[:8]}")
    assert proc.stdout.count("epoch[") == 3
    bad = subprocess.run(
        [sys.executable, "-m", "cirron.cli.main", "traces", "list", "--dir", "missing"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 1 and "no such directory" in bad.stderr
