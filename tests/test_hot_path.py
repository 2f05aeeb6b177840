"""The scope and mark hot path exists twice: in C (cirron/core/_hot.c) and in pure Python
(recorder.py). These tests hold the two to one behaviour, record for record, and check what only
the C one can get wrong: a stale build, its clock, reference cycles and leaks.

scripts/test also runs the core modules (this one included) with CIRRON_PURE_PYTHON=1, so the
pure-Python path passes the whole runtime and lifecycle suite as well.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import os
import threading
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np
import pytest

import cirron as ci
from cirron.core import recorder as recorder_mod
from cirron.core.errors import CirronWarning
from cirron.core.recorder import MAX_DEPTH, Recorder

PURE_ONLY = os.environ.get("CIRRON_PURE_PYTHON", "").strip() not in ("", "0")
SOURCE = Path(recorder_mod.__file__).with_name("_hot.c")

# Both implementations in this process: the C one (unless this run is pure-Python only) and
# the pure-Python one, forced on a Recorder of its own.
IMPLS = ["python"] if PURE_ONLY else ["c", "python"]


def make(impl: str) -> Recorder:
    rec = Recorder(pure=impl == "python")
    assert rec.hot_path == impl
    return rec


# -- the build -----------------------------------------------------------------------------------


def test_the_c_hot_path_is_built_from_the_current_source() -> None:
    from cirron.core import _hot  # built even where CIRRON_PURE_PYTHON=1 leaves it unused

    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    assert digest == _hot.SOURCE_HASH, (
        "cirron/core/_hot.c changed since the extension was built: reinstall "
        "(pip install -e .) or run ./scripts/test, which rebuilds it"
    )
    assert _hot.WAKE_MASK == recorder_mod._WAKE_MASK
    if PURE_ONLY:
        assert recorder_mod.HOT_PATH == "python" and recorder_mod._hot is None
    else:
        assert recorder_mod.HOT_PATH == "c" and recorder_mod._hot is _hot


def test_health_says_which_hot_path_runs() -> None:
    ci.profile(frameworks=[])
    assert ci.health()["hot_path"] == ("python" if PURE_ONLY else "c")
    ci.shutdown()


def test_the_c_clock_is_perf_counter_ns() -> None:
    from cirron.core import _hot

    for _ in range(1000):
        a = perf_counter_ns()
        b = _hot.perf_counter_ns()
        c = perf_counter_ns()
        assert a <= b <= c


# -- one behaviour, two implementations ---------------------------------------------------------


def records(rec: Recorder) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The recorder's span and mark records, ids renumbered in order of first appearance and
    times replaced by checks (end >= start), so two recorders' records compare equal."""
    ids: dict[int, int] = {}

    def rid(x: Any) -> Any:
        return ids.setdefault(x, len(ids)) if isinstance(x, int) and x > 1 << 64 else x

    spans, marks = [], []
    for tb in rec.buffers:
        for sid, parent, name, index, start, end, attrs, extra, seq in tb.spans:
            assert end >= start > 0
            spans.append((tb.number, seq, rid(sid), rid(parent), name, index, attrs, extra))
        for seq, t, target, name, value, kind, attrs in tb.marks:
            assert t > 0
            v = value if type(value) is not recorder_mod.Deferred else ("deferred", value.resolve())
            marks.append((tb.number, seq, rid(target), name, v, type(v).__name__, kind, attrs))
    return sorted(spans), sorted(marks)


def scenario_nesting(rec: Recorder) -> None:
    S = rec.Scope
    with S("outer", 0, split="train"):
        with S("inner", index=3) as s:
            assert s.depth == 2 and s.index == 3 and s.attrs == {}
            rec.mark("loss", 0.5)
            rec.mark("step", 7, kind="summary", phase="a")
        with S("named", **{"index": 1, "k": "v"}):
            pass

    @S("decorated", 2, tag=1)
    def f(x: int) -> int:
        rec.mark("inside", x)
        return x + 1

    assert f(1) == 2 and f(2) == 3


def scenario_exceptions(rec: Recorder) -> None:
    S = rec.Scope
    with pytest.raises(KeyError), S("raises"):
        raise KeyError("k")
    with S("ok"):
        try:
            with S("caught"):
                raise ValueError
        except ValueError:
            pass


def scenario_out_of_order(rec: Recorder) -> None:
    S = rec.Scope
    a = S("a").__enter__()
    b = S("b").__enter__()
    S("c").__enter__()
    b.__exit__(None, None, None)  # closes c above it (closed_by_parent), then b
    with S("after_b"):  # goes under a
        pass
    a.__exit__(None, None, None)
    a.__exit__(None, None, None)  # twice: nothing more
    # A scope closed in another context stays current here: the next one skips it.
    d = S("d").__enter__()
    contextvars.copy_context().run(d.__exit__, None, None, None)
    with S("after_d") as s:
        assert s.parent is None and s.depth == 1
        rec.mark("on_live", 1)
    rec.cur.set(d)  # a closed scope as the innermost: a mark goes to its live parent
    rec.mark("on_closed", 2)
    rec.cur.set(None)


def scenario_root_and_marks(rec: Recorder) -> None:
    rec.mark("before_root", 1)  # no session, no scope: "root" (None)
    rec.set_root_id(12345)
    rec.mark("under_root", True)
    with rec.Scope("top"):
        rec.mark("np", np.float32(0.25))
        rec.mark("np_int", np.int64(3))
        rec.mark("text", "x" * 10)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec.mark("bad", object())  # counted, not recorded
        (w,) = caught
        assert "was not recorded" in str(w.message) and w.filename == __file__
        rec.mark("none", None)
        rec.mark(b"not-a-str-name", 1.0)  # caught at seal time, recorded here as given
    rec.set_root_id(None)
    assert sum(tb.bad_values for tb in rec.buffers) == 2


def scenario_depth_limit(rec: Recorder) -> None:
    S = rec.Scope
    opened = [S(f"level{i}") for i in range(MAX_DEPTH + 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in opened:
            s.__enter__()
        for s in reversed(opened):
            s.__exit__(None, None, None)
    assert sum(tb.depth_drops for tb in rec.buffers) == 3
    (w,) = [w for w in caught if issubclass(w.category, CirronWarning)]
    assert "deeper than 64" in str(w.message)
    assert w.filename == __file__  # points at the user's code, not at cirron's


def scenario_threads_and_tasks(rec: Recorder) -> None:
    S = rec.Scope

    def work(k: int) -> None:
        with S("thread", k):
            rec.mark("k", k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
        t.join()  # one at a time: buffer numbers are assigned in a known order

    async def task(k: int) -> None:
        with S("task", k):
            await asyncio.sleep(0)
            rec.mark("t", k)
            await asyncio.sleep(0)

    async def main() -> None:
        with S("loop"):
            await asyncio.gather(task(0), task(1))

    asyncio.run(main())


def scenario_disabled(rec: Recorder) -> None:
    with rec.Scope("before"):
        rec.mark("before", 1)
    rec.disable()  # what was not sealed yet is discarded too
    with rec.Scope("dropped"):
        rec.mark("dropped", 1)
    rec.enable()  # a fresh process state: new buffers
    with rec.Scope("after"):
        rec.mark("after", 1)


SCENARIOS: list[Callable[[Recorder], None]] = [
    scenario_nesting,
    scenario_exceptions,
    scenario_out_of_order,
    scenario_root_and_marks,
    scenario_depth_limit,
    scenario_threads_and_tasks,
    scenario_disabled,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[9:])
def test_c_and_python_record_the_same(scenario: Callable[[Recorder], None]) -> None:
    results = {}
    for impl in IMPLS:
        rec = make(impl)
        scenario(rec)
        results[impl] = records(rec)
    spans, marks = results["python"]
    assert spans or marks  # every scenario records something
    if "c" in results:
        assert results["c"] == results["python"]


def test_the_scenarios_record_what_they_should() -> None:
    """The shared expectations, spelled out once (on the C path where built)."""
    rec = make(IMPLS[0])
    scenario_nesting(rec)
    scenario_out_of_order(rec)
    spans, marks = records(rec)
    by_name = {s[4]: s for s in spans}
    assert by_name["inner"][5] == 3 and by_name["inner"][3] == by_name["outer"][2]
    assert by_name["outer"][6] == {"split": "train"} and by_name["outer"][5] == 0
    assert by_name["named"][5] == 1 and by_name["named"][6] == {"k": "v"}
    assert [s[5] for s in spans if s[4] == "decorated"] == [2, 2]
    assert by_name["c"][6] == {"closed_by_parent": True}
    assert by_name["after_b"][3] == by_name["a"][2]
    assert by_name["after_d"][3] is None
    mark_target = {m[3]: m[2] for m in marks}
    assert mark_target["on_live"] == by_name["after_d"][2]
    assert mark_target["on_closed"] is None  # d's live parent: none, and no session
    assert mark_target["loss"] == by_name["inner"][2]
    rec2 = make(IMPLS[0])
    scenario_exceptions(rec2)
    exc = {s[4]: s[7] for s in records(rec2)[0]}
    assert exc == {"raises": KeyError, "ok": None, "caught": ValueError}


@pytest.mark.parametrize("impl", IMPLS)
def test_threads_switching_constantly_each_write_only_their_own_buffer(impl: str) -> None:
    """Each thread's records land in its own buffer, in sequence order (single writer), even
    when the interpreter switches threads inside a mark's slow path (numpy values)."""
    import sys
    import time

    class Level(int):
        """An int subclass, recorded as given after Python code ran; looking at it lets other
        threads run (as a tensor's conversion might)."""

        @property
        def shape(self) -> None:
            time.sleep(0)
            return None

    rec = make(impl)
    S, mark = rec.Scope, rec.mark
    n = 3_000

    def work(k: int) -> None:
        for i in range(n):
            with S("t", k):
                mark("np", np.float64(k))
                mark("level", Level(k))
                if i % 100 == 0:
                    rec.mark("bad", object())  # the warning and count path, under switching

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CirronWarning)
            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(old)
    assert len(rec.buffers) == 4
    for tb in rec.buffers:
        (k,) = {int(v) for _, _, _, _, v, _, _ in tb.marks}
        assert [m[0] for m in tb.marks] == list(range(2 * n))
        assert {type(m[4]) for m in tb.marks} == {float, Level}
        assert [s[8] for s in tb.spans] == list(range(n))
        assert {s[3] for s in tb.spans} == {k}
        assert tb.bad_values == n // 100


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_scope_arguments_raise_at_set_up(impl: str) -> None:
    S = make(impl).Scope
    with pytest.raises(TypeError):
        S("x", 1, index=2)
    with pytest.raises(TypeError):
        S()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        S("x", 1, 2)  # type: ignore[call-arg]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_scope_in_a_reference_cycle_is_collected(impl: str) -> None:
    rec = make(impl)
    freed = []

    class Canary:
        def __del__(self) -> None:
            freed.append(True)

    with rec.Scope("cyclic") as s:
        s.attrs["canary"] = Canary()
        s.attrs["self"] = s  # scope -> attrs -> scope
    for tb in rec.buffers:
        tb.spans.clear()
    del s
    gc.collect()
    assert freed == [True]


@pytest.mark.parametrize("impl", IMPLS)
def test_recording_leaks_no_memory(impl: str) -> None:
    rec = make(impl)
    S, mark = rec.Scope, rec.mark

    def run(n: int) -> None:
        for i in range(n):
            with S("outer", i, k=1), S("inner"):
                mark("loss", 0.5)
                mark("acc", np.float64(0.9), kind="summary")
        for tb in rec.buffers:
            tb.spans.clear()
            tb.marks.clear()

    run(2_000)  # warm up: caches, free lists, interned names
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(20_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A leaked int or tuple per call would be >= 20,000 x 28 bytes.
    assert grown < 64_000, f"{impl}: {grown} bytes not freed after 20,000 steps"


def test_internal_error_counts_start_afresh_with_each_session() -> None:
    from cirron.core.recorder import INTERNAL_ERRORS

    for session in range(2):
        ci.profile(frameworks=[])
        h = ci.health()
        assert h["internal_errors"] == 0 and h["last_internal_error"] is None
        with pytest.warns(Warning, match="internal error"):  # each session warns once
            ci._get()._rec.internal_error("test", RuntimeError(f"session {session}"))
        h = ci.health()
        assert h["internal_errors"] == 1 and f"session {session}" in h["last_internal_error"]
        ci.shutdown()
    INTERNAL_ERRORS.clear()  # raised on purpose
