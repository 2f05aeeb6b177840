"""Reading a spool back: file discovery, broken files, superseding, sessions, session lookup."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cirron.core import trace
from cirron.core.trace import (
    AmbiguousSession,
    SessionNotFound,
    iter_batches,
    load,
    load_dir,
    resolve_sessions,
    sessions,
)
from tests.helpers.spoolgen import (
    MS,
    T0,
    Ids,
    mark,
    span,
    write_batch,
    write_corrupt,
    write_future_version,
    write_non_object,
    write_training_run,
    write_truncated,
)


@pytest.fixture
def broken() -> Iterator[list[Path]]:
    """Paths of deliberately invalid spool files, removed before the suite validates the spool."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        p.unlink(missing_ok=True)


def test_batches_are_read_oldest_first_and_foreign_files_ignored(
    tmp_path: Path, broken: list[Path]
) -> None:
    spool = tmp_path / "spool"
    b2 = write_batch(spool, [], created_ns=T0 + 2)
    b1 = write_batch(spool, [], created_ns=T0 + 1)
    (spool / f"{T0 + 3:020d}-{'a' * 32}.json.tmp").write_text("{half")
    (spool / ".sent").write_text("x\n")
    (spool / "notes.json").write_text("{}")
    broken.append(spool / "notes.json")
    assert [p for p, _ in iter_batches(spool)] == [b1, b2]


def test_corrupt_truncated_and_non_object_files_are_named_and_skipped(
    tmp_path: Path, broken: list[Path]
) -> None:
    spool = tmp_path / "spool"
    good = write_batch(spool, [], created_ns=T0 + 5)
    broken += [
        write_corrupt(spool, T0 + 1),
        write_truncated(spool, T0 + 2),
        write_non_object(spool, T0 + 3),
    ]
    warnings: list[str] = []
    got = [p for p, _ in iter_batches(spool, on_warning=warnings.append)]
    assert got == [good]
    assert len(warnings) == 3
    for path, text in zip(broken, warnings, strict=True):
        assert str(path) in text and "skipped" in text
    assert "corrupt or truncated" in warnings[0] and "corrupt or truncated" in warnings[1]
    assert "not an object" in warnings[2]


def test_unknown_schema_version_is_reported_and_skipped(tmp_path: Path, broken: list[Path]) -> None:
    spool = tmp_path / "spool"
    write_batch(spool, [], created_ns=T0 + 1)
    broken.append(write_future_version(spool, T0 + 2))
    warnings: list[str] = []
    assert len(list(iter_batches(spool, on_warning=warnings.append))) == 1
    assert "schema_version 2" in warnings[0] and str(broken[0]) in warnings[0]


def test_a_file_vanishing_between_listing_and_reading_is_skipped_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    first = write_batch(spool, [], created_ns=T0 + 1)
    write_batch(spool, [], created_ns=T0 + 2)
    real = Path.read_text

    def evicting(self: Path, *a: object, **k: object) -> str:
        if self == first:
            self.unlink()
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", evicting)
    warnings: list[str] = []
    assert len(list(iter_batches(spool, on_warning=warnings.append))) == 1
    assert warnings == []


def test_missing_directory_reads_as_empty(tmp_path: Path) -> None:
    assert list(iter_batches(tmp_path / "nope")) == []
    assert sessions(load_dir(tmp_path / "nope")) == []


def test_dir_may_be_the_cirron_root_or_its_spool(tmp_path: Path) -> None:
    run = write_training_run(tmp_path / ".cirron", epochs=1, batches=2)
    for d in (tmp_path / ".cirron", tmp_path / ".cirron" / "spool"):
        data = load_dir(d)
        assert data.root == tmp_path / ".cirron"
        assert [s.id for s in sessions(data)] == [run.session_id]


# -- superseding ---------------------------------------------------------------------------


def _session(sid: str, end: int, **attrs: object) -> dict[str, object]:
    return span(sid, "cirron.session", None, T0, end, session_id=sid, attrs=attrs)


def test_closed_record_wins_over_a_newer_provisional_one(tmp_path: Path) -> None:
    sid = Ids(1)()
    spool = tmp_path / "spool"
    write_batch(spool, [_session(sid, T0 + 10 * MS, status="finished")], created_ns=T0 + 10 * MS)
    write_batch(spool, [_session(sid, T0 + 20 * MS, open=True)], created_ns=T0 + 20 * MS)
    data = load_dir(tmp_path)
    assert data.spans[sid]["end_ns"] == T0 + 10 * MS
    [info] = sessions(data)
    assert info.status == "finished" and not info.open


def test_newest_provisional_record_wins_until_the_closed_one_arrives(tmp_path: Path) -> None:
    sid = Ids(2)()
    spool = tmp_path / "spool"
    write_batch(spool, [_session(sid, T0 + 1 * MS, open=True)], created_ns=T0 + 1 * MS)
    write_batch(spool, [_session(sid, T0 + 2 * MS, open=True)], created_ns=T0 + 2 * MS)
    data = load_dir(tmp_path)
    assert data.spans[sid]["end_ns"] == T0 + 2 * MS
    assert sessions(data)[0].status == trace.UNKNOWN_STATUS
    write_batch(spool, [_session(sid, T0 + 3 * MS, status="crashed")], created_ns=T0 + 3 * MS)
    assert sessions(load_dir(tmp_path))[0].status == "crashed"


def test_batch_order_does_not_change_the_result(tmp_path: Path) -> None:
    write_training_run(tmp_path / ".cirron", epochs=2, batches=12, per_file=40)
    batches = [b for _, b in iter_batches(tmp_path / ".cirron" / "spool")]
    assert len(batches) > 3
    ordered = load(batches)
    random.Random(3).shuffle(batches)
    shuffled = load(batches)
    assert shuffled.spans == ordered.spans
    assert trace.render(shuffled) == trace.render(ordered)


def test_duplicate_batches_from_redelivery_count_once(tmp_path: Path) -> None:
    run = write_training_run(tmp_path / ".cirron", epochs=1, batches=4)
    batches = [b for _, b in iter_batches(tmp_path / ".cirron" / "spool")]
    once, twice = load(batches), load(batches + [json.loads(json.dumps(b)) for b in batches])
    assert len(twice.marks) == len(once.marks) and len(twice.spans) == len(once.spans)
    assert sessions(twice)[0].mark_count == sessions(once)[0].mark_count
    assert run.session_id in twice.spans


def test_malformed_records_are_skipped() -> None:
    sid = Ids(4)()
    batch = {
        "schema_version": 1,
        "created_ns": T0,
        "spans": [_session(sid, T0 + MS), {"id": "x"}, "junk", {"name": "a", "start_ns": 1}],
        "marks": [{"id": "m"}, 5],
        "snapshots": None,
    }
    data = load([batch])
    assert list(data.spans) == [sid] and data.marks == {} and data.snapshots == {}


# -- sessions ------------------------------------------------------------------------------


def test_sessions_report_identity_status_and_counts(tmp_path: Path) -> None:
    run = write_training_run(tmp_path / ".cirron", epochs=2, batches=5, name="mnist", version="1.2")
    [info] = sessions(load_dir(tmp_path / ".cirron"))
    per_epoch = 1 + 5 * 5 + 3  # epoch, batches with 4 children, validation with 2 batches
    assert info.id == run.session_id
    assert info.span_count == 1 + 2 * per_epoch
    assert info.mark_count == 2 * 5 + 2 * 2  # losses, then val_acc + lr per epoch
    assert (info.name, info.version, info.status, info.rank, info.pid) == (
        "mnist",
        "1.2",
        "finished",
        0,
        4242,
    )
    assert info.duration_ns == run.end_ns - run.start_ns
    assert info.as_dict()["duration_ns"] == info.duration_ns


def test_a_killed_session_shows_as_unknown_with_what_reached_the_spool(tmp_path: Path) -> None:
    run = write_training_run(tmp_path / ".cirron", epochs=2, batches=10, status=None, per_file=30)
    [info] = sessions(load_dir(tmp_path / ".cirron"))
    assert info.id == run.session_id and info.open
    assert info.status == "unknown (no clean exit)"
    assert 0 < info.span_count < 2 * 54


def test_a_live_session_of_this_process_is_running(tmp_path: Path) -> None:
    import os
    import socket

    sid = Ids(5)()
    rec = _session(sid, T0 + MS, open=True, pid=os.getpid(), host=socket.gethostname())
    write_batch(tmp_path / "spool", [rec], created_ns=T0 + MS)
    assert sessions(load_dir(tmp_path))[0].status == "running"


def test_spans_citing_a_missing_session_form_a_session_of_their_own(tmp_path: Path) -> None:
    ids = Ids(6)
    sid, eid = ids(), ids()
    write_batch(
        tmp_path / "spool",
        [span(eid, "epoch", sid, T0, T0 + MS, index=0, session_id=sid)],
        created_ns=T0 + MS,
    )
    data = load_dir(tmp_path)
    [info] = sessions(data)
    assert info.id == sid and info.status.startswith("unknown") and info.span_count == 1
    assert "epoch[0]" in trace.render(data)


def test_root_marks_attach_to_the_session_covering_them(tmp_path: Path) -> None:
    ids = Ids(7)
    sid, mid = ids(), ids()
    write_batch(
        tmp_path / "spool",
        [_session(sid, T0 + 10 * MS, status="finished")],
        [mark(mid, "root", "setup_s", 1.5, T0 + 5 * MS)],
        created_ns=T0 + 10 * MS,
    )
    data = load_dir(tmp_path)
    assert [m["id"] for m in data.marks_by_span[sid]] == [mid]


def test_ranks_of_one_run_group_together(tmp_path: Path) -> None:
    root = tmp_path / ".cirron"
    a = write_training_run(root, epochs=1, batches=2, rank=0, world_size=2, run_id="job-1", seed=1)
    b = write_training_run(
        root, epochs=1, batches=2, rank=1, world_size=2, run_id="job-1", seed=1, start_ns=T0 + 1
    )
    c = write_training_run(root, epochs=1, batches=2, seed=9, start_ns=T0 + 10**12)
    groups = trace.group_runs(sessions(load_dir(root)))
    assert [[s.id for s in g] for g in groups] == [[a.session_id, b.session_id], [c.session_id]]
    assert [s.rank for s in groups[0]] == [0, 1]


# -- session lookup ------------------------------------------------------------------------


def _three_sessions(root: Path) -> list[str]:
    runs = [
        write_training_run(root, epochs=1, batches=2, seed=i, start_ns=T0 + i * 10**12, run_id=r)
        for i, r in enumerate((None, "job-1", "job-2"))
    ]
    return [r.session_id for r in runs]


def test_resolve_sessions_by_default_id_prefix_run_and_all(tmp_path: Path) -> None:
    ids = _three_sessions(tmp_path / ".cirron")
    data = load_dir(tmp_path / ".cirron")
    assert resolve_sessions(data, None) == [ids[2]]
    assert resolve_sessions(data, "all") == ids
    assert resolve_sessions(data, ids[0]) == [ids[0]]
    assert resolve_sessions(data, ids[1][:10]) == [ids[1]]
    assert resolve_sessions(data, "job-1") == [ids[1]]
    assert resolve_sessions(data, ids[0][:10].upper()) == [ids[0]]


def test_resolve_sessions_errors_name_what_matched(tmp_path: Path) -> None:
    _three_sessions(tmp_path / ".cirron")
    data = load_dir(tmp_path / ".cirron")
    with pytest.raises(AmbiguousSession) as exc:
        resolve_sessions(data, "job-")
    assert exc.value.matches == ["job-1", "job-2"]
    with pytest.raises(SessionNotFound, match="cirron traces list"):
        resolve_sessions(data, "zzzz")
