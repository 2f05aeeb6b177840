"""The recording runtime as a user sees it: the tree, marks, drops, sinks and instances."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import cirron as ci
from cirron.core.errors import CirronConfigError, CirronWarning
from cirron.core.recorder import MARK_CAPACITY, MAX_DEPTH
from tests.helpers.run import all_marks, spans_by_name
from tests.helpers.schema import load_batches

SPOOL = Path(".cirron")


def finish() -> list[dict]:
    ci.shutdown()
    return load_batches(SPOOL)


def by_id(batches: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for b in batches:
        for s in b["spans"]:
            if s["id"] not in out or not s["attrs"].get("open"):
                out[s["id"]] = s
    return out


def test_epochs_and_batches_build_the_canonical_tree() -> None:
    ci.profile(frameworks=[])
    seen = []
    for epoch in ci.epochs(range(2)):
        for x in ci.batches(["a", "b", "c"]):
            seen.append((epoch, x))
            ci.mark("loss", 0.5)
    batches = finish()
    assert seen == [(e, x) for e in range(2) for x in "abc"]
    spans = spans_by_name(batches)
    (session,) = spans["cirron.session"]
    assert session["parent_id"] is None and session["attrs"]["status"] == "finished"
    epochs = spans["epoch"]
    assert [e["index"] for e in epochs] == [0, 1]
    assert all(e["parent_id"] == session["id"] for e in epochs)
    bs = spans["batch"]
    assert [b["index"] for b in bs] == [0, 1, 2, 0, 1, 2]
    assert [b["parent_id"] for b in bs] == [epochs[0]["id"]] * 3 + [epochs[1]["id"]] * 3
    assert all(isinstance(b["attrs"]["data_load_ns"], int) for b in bs)
    marks = all_marks(batches)
    assert len(marks) == 6
    assert [m["span_id"] for m in marks] == [b["id"] for b in bs]
    for b in bs:  # every batch lists the mark attached to it
        assert len(b["mark_ids"]) == 1
    assert all(s["session_id"] == session["id"] for s in by_id(batches).values())
    for s in by_id(batches).values():
        assert s["end_ns"] >= s["start_ns"] > 1_600_000_000 * 10**9  # wall clock ns


def test_scope_nesting_attrs_decorator_and_exception() -> None:
    ci.profile(frameworks=[])

    @ci.scope("helper", kind="decorated")
    def helper(x: int) -> int:
        ci.mark("x", x)
        return x * 2

    with ci.scope("outer", index=3, split="val") as outer:
        assert helper(2) == 4
        assert outer.open
    with pytest.raises(ZeroDivisionError), ci.scope("boom"):
        1 / 0  # noqa: B018
    spans = spans_by_name(finish())
    (o,) = spans["outer"]
    (h,) = spans["helper"]
    (boom,) = spans["boom"]
    assert o["index"] == 3 and o["attrs"] == {"split": "val"}
    assert h["parent_id"] == o["id"] and h["attrs"] == {"kind": "decorated"}
    assert boom["attrs"]["exception"] == "ZeroDivisionError"


def test_marks_attach_innermost_then_session_then_root(tmp_path: Path) -> None:
    c = ci.Cirron(output_dir=str(tmp_path / "pre"))
    c.mark("before", 1)  # no profile() yet: the legacy "root" sentinel
    c.profile(frameworks=[])
    c.mark("session_level", 2)
    with c.scope("s") as s:
        c.mark("inner", 3)
    c.shutdown()
    batches = load_batches(tmp_path / "pre")
    marks = {m["name"]: m for m in all_marks(batches)}
    session = spans_by_name(batches)["cirron.session"][0]
    assert marks["before"]["span_id"] == "root"
    assert marks["session_level"]["span_id"] == session["id"]
    assert marks["inner"]["span_id"] == s.span_id


def test_mark_value_types_non_finite_and_string_cap() -> None:
    ci.profile(frameworks=[])
    ci.mark("i", 3)
    ci.mark("f", 2.5)
    ci.mark("b", True)
    ci.mark("s", "é" * 300)
    ci.mark("np_f", np.float32(1.5))
    ci.mark("np_i", np.int64(7))
    ci.mark("np_b", np.bool_(False))
    ci.mark("np_0d", np.array(4.0))
    ci.mark("nan", float("nan"))
    ci.mark("inf", float("inf"))
    ci.mark("ninf", -np.float64("inf"))
    ci.mark("final", 0.9, kind="summary", split="val")
    marks = {m["name"]: m for m in all_marks(finish())}
    assert (marks["i"]["value_type"], marks["i"]["value"]) == ("int", 3)
    assert (marks["f"]["value_type"], marks["f"]["value"]) == ("float", 2.5)
    assert (marks["b"]["value_type"], marks["b"]["value"]) == ("bool", True)
    assert marks["s"]["value_type"] == "string"
    assert len(marks["s"]["value"].encode()) <= 256 and marks["s"]["value"] == "é" * 128
    assert (marks["np_f"]["value_type"], marks["np_f"]["value"]) == ("float", 1.5)
    assert (marks["np_i"]["value_type"], marks["np_i"]["value"]) == ("int", 7)
    assert (marks["np_b"]["value_type"], marks["np_b"]["value"]) == ("bool", False)
    assert marks["np_0d"]["value"] == 4.0
    for name, which in (("nan", "nan"), ("inf", "inf"), ("ninf", "-inf")):
        assert marks[name]["value"] is None and marks[name]["attrs"]["non_finite"] == which
    assert marks["final"]["kind"] == "summary" and marks["final"]["attrs"] == {"split": "val"}
    assert marks["i"]["kind"] == "point"


def test_bad_mark_values_are_counted_and_warned_once_never_raised() -> None:
    ci.profile(frameworks=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ci.mark("list", [1, 2])
        ci.mark("dict", {"a": 1})
        ci.mark("array", np.zeros(3))
        ci.mark("kind", 1.0, kind="bogus")
        ci.mark(42, 1.0)  # type: ignore[arg-type]
        ci.flush()  # a bad kind or name is caught when sealing, off the hot path
    ours = [w for w in caught if issubclass(w.category, CirronWarning)]
    assert len(ours) == 1 and "list" in str(ours[0].message)
    assert ci.health()["drops"]["bad_mark_values"] == 5
    assert all_marks(finish()) == []


def test_depth_beyond_64_is_dropped_and_counted_but_the_body_runs() -> None:
    ci.profile(frameworks=[])
    ran = []

    def nest(n: int) -> None:
        with ci.scope("level", index=n):
            if n < MAX_DEPTH + 5:
                nest(n + 1)
            else:
                ran.append(n)
                ci.mark("deep", 1)

    with pytest.warns(CirronWarning, match="deeper than 64"):
        nest(1)
    assert ran == [MAX_DEPTH + 5]
    assert ci.health()["drops"]["scopes_depth"] == 5
    batches = finish()
    levels = spans_by_name(batches)["level"]
    assert len(levels) == MAX_DEPTH
    (deep,) = all_marks(batches)
    assert deep["span_id"] == next(s["id"] for s in levels if s["index"] == MAX_DEPTH)


def test_out_of_order_close_leaves_no_stale_frame() -> None:
    c = ci._get()
    ci.profile(frameworks=[])
    outer = c._rec.open("outer")
    inner = c._rec.open("inner")
    c._rec.close(outer)  # closes inner too
    assert not inner.open and c._rec.current() is None
    inner.close()  # a late close of the already-closed child is a no-op
    with ci.scope("after") as after:
        pass
    spans = spans_by_name(finish())
    assert spans["inner"][0]["attrs"]["closed_by_parent"] is True
    assert spans["inner"][0]["parent_id"] == spans["outer"][0]["id"]
    assert spans["after"][0]["parent_id"] == spans["cirron.session"][0]["id"]
    assert after.span_id == spans["after"][0]["id"]


def test_break_out_of_loops_closes_cleanly() -> None:
    ci.profile(frameworks=[])
    for e in ci.epochs(range(10)):
        for b in ci.batches(range(10)):
            if b == 2:
                break
        if e == 1:
            break
    with ci.scope("next"):
        pass
    spans = spans_by_name(finish())
    assert [e["index"] for e in spans["epoch"]] == [0, 1]
    assert [b["index"] for b in spans["batch"]] == [0, 1, 2, 0, 1, 2]
    assert spans["next"][0]["parent_id"] == spans["cirron.session"][0]["id"]


def test_exception_in_loop_body_closes_batch_and_epoch_as_stopped_early() -> None:
    ci.profile(frameworks=[])
    with pytest.raises(RuntimeError):
        for _ in ci.epochs(range(3)):
            for b in ci.batches(range(3)):
                if b == 1:
                    raise RuntimeError("bad batch")
    with ci.scope("after"):
        pass
    spans = spans_by_name(finish())
    assert [b["index"] for b in spans["batch"]] == [0, 1]
    assert "stopped_early" not in spans["batch"][0]["attrs"]
    assert spans["batch"][1]["attrs"]["stopped_early"] is True
    (epoch,) = spans["epoch"]
    assert epoch["attrs"]["stopped_early"] is True
    assert spans["after"][0]["parent_id"] == spans["cirron.session"][0]["id"]  # no stale frame


def test_exhausted_loops_are_not_marked_stopped_early() -> None:
    ci.profile(frameworks=[])
    for _ in ci.epochs(range(2)):
        for _ in ci.batches(range(2)):
            pass
    spans = spans_by_name(finish())
    assert not any("stopped_early" in s["attrs"] for s in spans["epoch"] + spans["batch"])


def test_threads_record_into_their_own_trees() -> None:
    ci.profile(frameworks=[])
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        barrier.wait()
        with ci.scope("worker", index=k):
            for i in range(200):
                ci.mark("i", i, worker=k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ci.health()["drops"]["marks"] == 0
    batches = finish()
    workers = {s["index"]: s for s in spans_by_name(batches)["worker"]}
    assert sorted(workers) == [0, 1, 2, 3]
    assert len({s["thread_id"] for s in workers.values()}) == 4
    marks = all_marks(batches)
    assert len(marks) == 800
    for m in marks:
        assert m["span_id"] == workers[m["attrs"]["worker"]]["id"]


def test_asyncio_tasks_with_interleaved_scopes_keep_their_own_stacks() -> None:
    ci.profile(frameworks=[])

    async def request(k: int) -> None:
        with ci.scope("request", index=k):
            for _ in range(3):
                await asyncio.sleep(0)
                with ci.scope("step", task=k):
                    ci.mark("task", k)
                    await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(request(k) for k in range(5)))

    asyncio.run(main())
    batches = finish()
    spans = spans_by_name(batches)
    requests = {s["id"]: s["index"] for s in spans["request"]}
    steps = {s["id"]: s for s in spans["step"]}
    assert len(requests) == 5 and len(steps) == 15
    for s in steps.values():
        assert requests[s["parent_id"]] == s["attrs"]["task"]
    for m in all_marks(batches):
        assert steps[m["span_id"]]["attrs"]["task"] == m["value"]


def test_second_profile_call_warns_and_returns_the_same_handle() -> None:
    p = ci.profile(frameworks=[])
    with pytest.warns(CirronWarning, match="already called"):
        assert ci.profile() is p
    assert ci.health()["enabled"] is True


def test_disabled_profiler_writes_nothing_and_starts_no_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    hook = sys.excepthook
    p = ci.profile(enabled=False)
    for _ in ci.epochs(range(2)):
        ci.mark("loss", 1.0)
        with ci.scope("x"):
            pass
    assert not p.enabled and ci.health()["enabled"] is False
    assert {t.name for t in threading.enumerate()} == before
    assert sys.excepthook is hook
    ci.shutdown()
    assert not SPOOL.exists()
    assert all(len(tb.marks) == 0 for tb in ci._REC.buffers)


def test_shutdown_is_idempotent_and_profile_afterwards_starts_a_fresh_session() -> None:
    p1 = ci.profile(frameworks=[])
    ci.mark("a", 1)
    ci.shutdown()
    ci.shutdown()
    p2 = ci.profile(frameworks=[])
    assert p2 is not p1 and p2.session_id != p1.session_id
    ci.mark("b", 2)
    batches = finish()
    sessions = spans_by_name(batches)["cirron.session"]
    assert len(sessions) == 2 and all(s["attrs"]["status"] == "finished" for s in sessions)
    marks = {m["name"]: m["span_id"] for m in all_marks(batches)}
    assert marks == {"a": p1.session_id, "b": p2.session_id}


def test_two_instances_write_independent_spools(tmp_path: Path) -> None:
    a = ci.Cirron(output_dir=str(tmp_path / "a"), workspace_id="wa")
    b = ci.Cirron(output_dir=str(tmp_path / "b"), workspace_id="wb")
    a.profile(frameworks=[])
    b.profile(frameworks=[])
    with a.scope("in_a"):
        a.mark("x", 1)
    for _ in b.epochs(range(2)):
        b.mark("y", 2)
    a.shutdown()
    assert b.profiling  # shutting a down leaves b running
    b.shutdown()
    sa, sb = load_batches(tmp_path / "a"), load_batches(tmp_path / "b")
    assert set(spans_by_name(sa)) == {"cirron.session", "in_a"}
    assert set(spans_by_name(sb)) == {"cirron.session", "epoch"}
    assert [m["name"] for m in all_marks(sa)] == ["x"]
    assert [m["name"] for m in all_marks(sb)] == ["y", "y"]
    assert spans_by_name(sa)["cirron.session"][0]["attrs"]["workspace_id"] == "wa"


def test_mark_buffer_overflow_drops_oldest_and_counts_exactly() -> None:
    ci.profile(frameworks=[], flush_interval=3600)
    ci._REC.wake = lambda: None  # keep the flusher asleep: the buffer must overflow
    extra = 1234
    for i in range(MARK_CAPACITY + extra):
        ci.mark("m", i)
    ci.flush()
    assert ci.health()["drops"]["marks"] == extra
    assert ci.health()["mark_drop_count"] == extra
    marks = all_marks(finish())
    assert len(marks) == MARK_CAPACITY
    assert marks[0]["value"] == extra  # the oldest were dropped


def test_output_stdout_and_log_and_none(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cirron")
    ci.profile(frameworks=[], output=["stdout", "log"])
    for _ in ci.epochs(range(1)):
        ci.mark("loss", 1.0)
    ci.shutdown()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines and all(b["schema_version"] == 1 for b in lines)
    assert any(m["name"] == "loss" for b in lines for m in b["marks"])
    assert any("epoch[0] closed" in r.getMessage() for r in caplog.records)
    assert not SPOOL.exists()  # "spool" was not among the outputs
    ci.profile(frameworks=[], output="none")
    ci.mark("x", 1)
    ci.shutdown()
    assert not SPOOL.exists()


def test_bad_output_is_a_clear_error_and_installs_nothing() -> None:
    hook = sys.excepthook
    with pytest.raises(CirronConfigError, match="unknown output 'disk'"):
        ci.profile(output=["spool", "disk"])
    assert sys.excepthook is hook and not ci._get().profiling


def test_failed_profile_rolls_back_every_hook() -> None:
    hook = sys.excepthook
    threads = threading.active_count()
    with pytest.raises(CirronConfigError, match="https"):
        ci.Cirron(api_key="k-123", api_endpoint="http://example.com").profile(frameworks=[])
    assert sys.excepthook is hook
    assert threading.active_count() == threads


def test_profile_failing_late_stops_the_flusher_and_forgets_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cirron.core.errors import CirronDependencyError
    from cirron.integrations import FRAMEWORKS, Framework

    monkeypatch.setitem(
        FRAMEWORKS,
        "caffe",
        Framework("caffe", "cirron.integrations.caffe", ("caffe_not_installed",), "caffe", "caffe"),
    )
    hook = sys.excepthook
    c = ci.Cirron()
    with pytest.raises(CirronDependencyError, match=r"pip install 'cirron-sdk\[caffe\]'"):
        c.profile(frameworks=["caffe"])  # fails after the flusher and session started
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "cirron-flusher" and t.is_alive()]
    assert sys.excepthook is hook and not c.profiling
    assert c._rec.root_id is None and not c._rec.structural
    p = c.profile(frameworks=[])  # and a later profile() works
    assert p.status == "running"
    c.shutdown()


def test_cirron_yaml_framework_narrows_autodetect(monkeypatch: pytest.MonkeyPatch) -> None:
    import cirron.integrations as integrations

    seen: list[str] = []
    monkeypatch.setattr(integrations, "_activate", lambda c, p, fw: seen.append(fw.name) or True)
    monkeypatch.setitem(sys.modules, "sklearn", sys.modules.get("sklearn", object()))
    monkeypatch.setitem(sys.modules, "onnxruntime", sys.modules.get("onnxruntime", object()))
    Path("cirron.yaml").write_text("name: m\nversion: '1'\nframework: onnx\ntype: regression\n")
    p = ci.profile()
    assert seen == ["onnx"] and p.frameworks == ["onnx"]


def test_warnings_configured_as_errors_never_raise_into_the_loop() -> None:
    ci.profile(frameworks=[])
    ran = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci.mark("bad", object())

        def nest(n: int) -> None:
            with ci.scope("d", index=n):
                if n < MAX_DEPTH + 2:
                    nest(n + 1)
                else:
                    ran.append(n)

        nest(1)
    assert ran == [MAX_DEPTH + 2]
    assert ci.health()["drops"]["bad_mark_values"] == 1


def test_unknown_framework_warns_and_frameworks_empty_installs_nothing() -> None:
    with pytest.warns(CirronWarning, match="unknown framework 'caffe'"):
        p = ci.profile(frameworks=["caffe"])
    assert p.frameworks == [] and ci.health()["frameworks_installed"] == []


def test_health_reports_the_documented_keys() -> None:
    ci.profile(frameworks=[])
    with ci.scope("a"), ci.scope("b"):
        h = ci.health()
    assert h["scope_depth"] == 2
    for key in (
        "enabled",
        "transport",
        "frameworks_installed",
        "drops",
        "mark_drop_count",
        "spool_drop_count",
        "spool_bytes",
        "spool_files",
        "flush_latency_ns",
        "last_internal_error",
    ):
        assert key in h
    assert h["transport"] == "file_only"
    ci.flush()
    h = ci.health()
    assert h["spool_files"] >= 1 and h["spool_bytes"] > 0 and h["flush_latency_ns"] > 0


def test_spool_cap_evicts_oldest_files_and_counts_them(tmp_path: Path) -> None:
    c = ci.Cirron(output_dir=str(tmp_path / "cap"), spool_max_bytes=6000)
    c.profile(frameworks=[], flush_interval=3600)
    for i in range(30):
        with c.scope("step", index=i):
            for _ in range(10):
                c.mark("m", i)
        c.flush()
    h = c.health()
    assert h["spool_drop_count"] > 0 and h["spool_bytes"] <= 6000
    files = sorted((tmp_path / "cap" / "spool").glob("*.json"))
    assert len(files) == h["spool_files"]
    c.shutdown()
    values = [m["value"] for m in all_marks(load_batches(tmp_path / "cap"))]
    assert values and values[-1] == 29 and 0 not in values  # oldest evicted, newest kept


def test_trace_reads_back_the_current_session() -> None:
    ci.profile(frameworks=[])
    for _ in ci.epochs(range(2)):
        for _ in ci.batches(range(3)):
            ci.mark("loss", 0.25)
    tree = ci.trace()
    assert "cirron.session" in tree and "epoch" in tree and "loss" in tree
    d = ci.trace(format="dict")
    assert d["name"] == "cirron.session"
    assert [c["name"] for c in d["children"]] == ["epoch", "epoch"]
    assert json.loads(ci.trace(format="json"))["name"] == "cirron.session"
    df = ci.trace(format="df")
    assert len(df[df["name"] == "batch"]) == 6
    ci.shutdown()


def test_sweeps_stale_temp_files_at_start(tmp_path: Path) -> None:
    spool = tmp_path / "sw" / "spool"
    spool.mkdir(parents=True)
    (spool / ("00000000000000000001-" + "0" * 32 + ".json.tmp")).write_text("{partial")
    c = ci.Cirron(output_dir=str(tmp_path / "sw"))
    c.profile(frameworks=[])
    assert not list(spool.glob("*.tmp"))
    c.shutdown()


def test_trace_works_without_the_spool_sink() -> None:
    ci.profile(frameworks=[], output="none")
    for _ in ci.epochs(range(2)):
        ci.mark("loss", 0.5)
    d = ci.trace(format="dict")
    assert [c["name"] for c in d["children"]] == ["epoch", "epoch"]
    ci.shutdown()
    assert not SPOOL.exists()


def test_internal_faults_are_counted_and_never_raised() -> None:
    from cirron.core.recorder import INTERNAL_ERRORS

    ci.profile(frameworks=[])
    c = ci._get()

    def broken(scope: object) -> None:
        raise RuntimeError("listener bug")

    c._rec.epoch_listeners.append(broken)
    with pytest.warns(Warning, match="internal error"):
        for _ in ci.epochs(range(2)):
            pass
    h = ci.health()
    assert h["internal_errors"] == 2 and "listener bug" in h["last_internal_error"]
    assert len(INTERNAL_ERRORS) == 2
    INTERNAL_ERRORS.clear()  # expected here; any other test with one fails


def test_cirron_yaml_identity_and_profiling_defaults_reach_the_session() -> None:
    Path("cirron.yaml").write_text(
        "name: churn-model\nversion: 1.2.0\nframework: pytorch\ntype: classification\n"
        "profiling:\n  flush_interval: 0.25\n"
    )
    p = ci.profile(frameworks=[])
    assert p.settings.flush_interval == 0.25
    assert "cirron.yaml" in p.settings.source("flush_interval")
    session = spans_by_name(finish())["cirron.session"][0]
    assert session["attrs"]["name"] == "churn-model" and session["attrs"]["version"] == "1.2.0"
    assert session["attrs"]["framework"] == "pytorch"


def test_attrs_may_use_any_name_including_name_and_value() -> None:
    ci.profile(frameworks=[])
    with ci.scope("layer", name="encoder", kind="x"):
        ci.mark("m", 1, name="n", value="v", kind="summary")
    batches = finish()
    (layer,) = spans_by_name(batches)["layer"]
    assert layer["attrs"] == {"name": "encoder", "kind": "x"}
    (m,) = all_marks(batches)
    assert m["attrs"] == {"name": "n", "value": "v"} and m["kind"] == "summary"


def test_flush_hooks_run_before_each_flush_and_once_before_the_session_closes() -> None:
    p = ci.profile(frameworks=[], flush_interval=3600)
    calls = []
    p.flush_hooks.append(lambda: (calls.append(1), ci.mark("p50", 1.5, kind="summary")))
    ci.flush()
    ci.shutdown()
    batches = load_batches(SPOOL)
    session = spans_by_name(batches)["cirron.session"][0]
    marks = all_marks(batches)
    assert len(calls) == 2 and len(marks) == 2
    assert all(m["span_id"] == session["id"] for m in marks)


def test_trace_of_a_session_that_recorded_nothing_is_empty_not_an_error() -> None:
    ci.profile(frameworks=[], output="none")
    assert ci.trace(format="dict") == {}
    assert isinstance(ci.trace(), str)


def test_a_drain_takes_what_is_buffered_and_terminates_under_overload() -> None:
    """A producer faster than the flusher must not make a drain run (and grow) forever."""
    from collections import deque

    from cirron.core.seal import Sealer

    c = ci._get()
    rec = c._rec
    tb = rec.buffer()

    class Refilling(deque):  # type: ignore[type-arg]
        def popleft(self):  # type: ignore[no-untyped-def]
            item = super().popleft()
            self.append((item[0] + 10**9, *item[1:]))  # a new record for every one taken
            return item

    original, last = tb.marks, tb.last_mark_seq
    tb.marks = Refilling(maxlen=65536)
    try:
        for i in range(1000):
            tb.marks.append((i, 0, None, "m", float(i), "point", None))
        tb.last_mark_seq = -1
        _, marks, _, _ = Sealer(rec).drain()
        assert len(marks) == 1000 and len(tb.marks) == 1000  # newcomers wait for the next drain
    finally:
        tb.marks, tb.last_mark_seq = original, last


def test_sessions_in_one_process_get_their_own_run_id_and_children_inherit_it(
    tmp_path: Path,
) -> None:
    from tests.helpers.run import run_py

    code = """
import json, os, subprocess, sys
import cirron as ci
ids = []
for _ in range(2):
    p = ci.profile(frameworks=[])
    ids.append(p.session.attrs["run_id"])
    child = subprocess.run([sys.executable, "-c",
        "import cirron as ci; print(ci.profile(frameworks=[]).session.attrs['run_id'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    ids.append(child)
    ci.shutdown()
print(json.dumps(ids))
"""
    r = run_py(code, tmp_path)
    assert r.returncode == 0, r.stderr
    first, first_child, second, second_child = json.loads(r.stdout.strip().splitlines()[-1])
    assert first == first_child and second == second_child  # a child joins its parent's run
    assert first != second  # a new session of the same process is a new run


def test_a_batch_closed_with_packed_children_is_written_with_each_child_as_a_span() -> None:
    """``Scope.close(end, children)``: the sealer writes each child that happened (end >= 0) as
    a span under the batch, with an id of its own, also for a batch id of an unusual shape."""
    ci.profile(frameworks=[])
    rec = ci._get()._rec
    ids = []
    for _ in ci.epochs(range(1)):
        for odd in (False, True):
            s = rec.open("batch", int(odd))
            if odd:
                s.id |= 1 << 60  # not a shape recorded ids have: children get fresh ids
            t = s.start
            s.close(t + 100, (t, t + 10, t + 10, t + 40, -1, -1, t + 50, t + 90))
            ids.append(format(s.id, "032x"))
    spans = by_id(finish())
    for bid in ids:
        kids = sorted((c for c in spans.values() if c["parent_id"] == bid), key=lambda c: c["name"])
        assert [c["name"] for c in kids] == ["data_load", "forward", "optimizer_step"]
        start = spans[bid]["start_ns"]
        assert [(c["start_ns"] - start, c["end_ns"] - start) for c in kids] == [
            (0, 10),
            (10, 40),
            (50, 90),
        ]
    child_ids = [c["id"] for c in spans.values() if c["parent_id"] in ids]
    assert len(child_ids) == len(set(child_ids)) == 6
    assert not set(child_ids) & set(ids)


def test_marks_on_attaches_numeric_values_to_the_given_scope_and_skips_the_rest() -> None:
    """A framework callback's logs for a batch: marked on that batch whatever is innermost,
    numbers only (ints, floats, numpy scalars), nothing raised for the rest."""
    ci.profile(frameworks=[])
    rec = ci._get()._rec
    with ci.scope("outer") as outer, ci.scope("inner"):
        rec.marks_on(
            outer,
            {
                "loss": 0.5,
                "step": 3,
                "acc": np.float32(0.25),
                "flag": True,
                "note": "x",
                "hist": [1, 2],
                "bad": np.ones(3),
            },
        )
    batches = finish()
    spans = by_id(batches)
    (outer_span,) = [s for s in spans.values() if s["name"] == "outer"]
    marks = {m["name"]: m for b in batches for m in b["marks"]}
    assert sorted(marks) == ["acc", "loss", "step"]
    assert {m["span_id"] for m in marks.values()} == {outer_span["id"]}
    assert (marks["loss"]["value"], marks["step"]["value"], marks["acc"]["value"]) == (0.5, 3, 0.25)
    assert ci.health()["drops"]["bad_mark_values"] == 0
