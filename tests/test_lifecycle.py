"""Lifecycle guarantees, proved in real subprocesses: nothing lost at exit, the right terminal
status, SIGTERM chaining, Ctrl-C, crashes, kill -9, fork, and a hostile file system."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.run import all_marks, child_env, run_py, spans_by_name, write_script
from tests.helpers.schema import BATCH_NAME, load_batches, spool_files, validate_batch

LOOP = """
import sys, time
sys.path.insert(0, {repo!r})
import cirron as ci
ci.profile(frameworks=[], flush_interval={interval})
for e in ci.epochs(range({epochs})):
    for b in ci.batches(range({batches})):
        ci.mark("loss", 1.0 / (b + 1))
"""


def loop(epochs: int = 3, batches: int = 4, interval: float = 0.2) -> str:
    from tests.helpers.run import REPO

    return LOOP.format(repo=str(REPO), epochs=epochs, batches=batches, interval=interval)


def session_of(batches: list[dict]) -> dict:
    (session,) = spans_by_name(batches)["cirron.session"]
    return session


def test_normal_return_without_shutdown_loses_nothing(tmp_path: Path) -> None:
    r = run_py(loop() + "print('done')\n", tmp_path)
    assert r.returncode == 0, r.stderr
    batches = load_batches(tmp_path / ".cirron")
    spans = spans_by_name(batches)
    assert session_of(batches)["attrs"]["status"] == "finished"
    assert len(spans["epoch"]) == 3 and len(spans["batch"]) == 12
    assert len(all_marks(batches)) == 12


def test_sys_exit_closes_the_session(tmp_path: Path) -> None:
    r = run_py(loop() + "sys.exit(3)\n", tmp_path)
    assert r.returncode == 3
    batches = load_batches(tmp_path / ".cirron")
    assert session_of(batches)["attrs"]["status"] == "finished"
    assert len(all_marks(batches)) == 12


def test_unhandled_exception_marks_the_session_crashed(tmp_path: Path) -> None:
    code = loop() + "raise ValueError('diverged')\n"
    r = run_py(code, tmp_path)
    assert r.returncode == 1 and "ValueError: diverged" in r.stderr  # the user's traceback
    batches = load_batches(tmp_path / ".cirron")
    s = session_of(batches)["attrs"]
    assert s["status"] == "crashed" and s["exception"] == "ValueError"
    assert len(all_marks(batches)) == 12


def test_exception_inside_the_loop_closes_open_epoch_and_batch(tmp_path: Path) -> None:
    code = (
        loop(epochs=1, batches=1)
        + """
for e in ci.epochs(range(5)):
    for b in ci.batches(range(5)):
        if e == 1 and b == 2:
            raise RuntimeError("nan loss")
"""
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 1
    spans = spans_by_name(load_batches(tmp_path / ".cirron"))
    assert [e["index"] for e in spans["epoch"]] == [0, 0, 1]
    assert all(not s["attrs"].get("open") for v in spans.values() for s in v)
    assert spans["cirron.session"][0]["attrs"]["status"] == "crashed"


def test_uncaught_keyboard_interrupt_is_interrupted(tmp_path: Path) -> None:
    r = run_py(loop() + "raise KeyboardInterrupt\n", tmp_path)
    assert r.returncode != 0 and "KeyboardInterrupt" in r.stderr
    s = session_of(load_batches(tmp_path / ".cirron"))
    assert s["attrs"]["status"] == "interrupted"


def test_ctrl_c_stays_a_keyboard_interrupt_and_recording_continues(tmp_path: Path) -> None:
    code = (
        loop(epochs=1, batches=2)
        + """
import os, signal
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("caught")
with ci.scope("after_interrupt"):
    ci.mark("still", 1)
"""
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 0 and "caught" in r.stdout
    batches = load_batches(tmp_path / ".cirron")
    assert "after_interrupt" in spans_by_name(batches)
    assert session_of(batches)["attrs"]["status"] == "finished"


def test_sigterm_with_default_handler_flushes_then_dies_by_the_signal(tmp_path: Path) -> None:
    code = (
        loop(epochs=1, batches=3)
        + """
print("ready", flush=True)
for e in ci.epochs(range(100000)):
    ci.mark("tick", e)
    time.sleep(0.001)
"""
    )
    script = write_script(tmp_path / "prog.py", code)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert rc == -signal.SIGTERM  # the default action still ends the process
    assert time.monotonic() - t0 < 2.5
    batches = load_batches(tmp_path / ".cirron")
    s = session_of(batches)
    assert s["attrs"]["status"] == "terminated" and not s["attrs"].get("open")
    ticks = [m["value"] for m in all_marks(batches) if m["name"] == "tick"]
    epochs = [e for e in spans_by_name(batches)["epoch"] if not e["attrs"].get("open")]
    assert ticks == list(range(len(ticks))) and len(ticks) > 10  # every tick up to the signal
    assert epochs[-1]["attrs"].get("closed_at_exit") is True


def test_sigterm_runs_the_programs_own_handler_after_flushing(tmp_path: Path) -> None:
    code = (
        """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
"""
        + loop(epochs=1, batches=2)
        + """
import os
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("handler saw", stop, flush=True)
ci.mark("after", 1)
"""
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 0 and "handler saw [15]" in r.stdout
    batches = load_batches(tmp_path / ".cirron")
    assert session_of(batches)["attrs"]["status"] == "terminated"
    assert "after" in {m["name"] for m in all_marks(batches)}


def test_exit_waits_no_longer_than_exit_timeout(tmp_path: Path) -> None:
    code = (
        loop(epochs=2, batches=50, interval=0.05)
        + "t_end = time.monotonic()\n"
        + ("import atexit\natexit.register(lambda: None)\n")
    )
    t0 = time.monotonic()
    r = run_py(code, tmp_path, env=child_env(CIRRON_EXIT_TIMEOUT="0.5"))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10  # import + run + at most exit_timeout
    assert len(all_marks(load_batches(tmp_path / ".cirron"))) == 100


@pytest.mark.parametrize(
    "seed", [*range(4), *(pytest.param(s, marks=pytest.mark.slow) for s in range(4, 24))]
)
def test_kill_9_never_leaves_a_torn_file_and_loses_at_most_two_intervals(
    tmp_path: Path, seed: int
) -> None:
    interval = 0.1
    code = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import cirron as ci
ci.profile(frameworks=[], flush_interval={interval})
print("ready", flush=True)
i = 0
while True:
    ci.mark("i", i, t=time.time_ns())
    i += 1
    if i % 20 == 0:
        time.sleep(0.001)  # ~20k marks/s: enough to be mid-flush often, quick to validate
"""
    script = write_script(tmp_path / "prog.py", code)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3 + random.Random(seed).random() * 0.7)
    killed_at = time.time_ns()
    proc.kill()
    proc.wait(timeout=10)
    files = spool_files(tmp_path / ".cirron")
    assert files, "nothing was flushed before the kill"
    for f in files:  # every visible file parses and validates: no torn writes
        assert BATCH_NAME.match(f.name)
        validate_batch(json.loads(f.read_text()), str(f))
    for leftover in (tmp_path / ".cirron" / "spool").glob("*.tmp"):
        leftover.unlink()  # a kill mid-write may leave a temp file; the next start sweeps it
    marks = all_marks(load_batches(tmp_path / ".cirron"))
    values = sorted(m["value"] for m in marks)
    assert values == list(range(len(values)))  # a prefix: nothing missing in the middle
    last = max(m["attrs"]["t"] for m in marks)
    assert killed_at - last <= 2 * interval * 1e9 + 0.3e9  # slack for a loaded machine


def test_forked_child_records_into_its_own_buffers(tmp_path: Path) -> None:
    code = (
        loop(epochs=1, batches=1)
        + """
import os
with ci.scope("before_fork") as parent_scope:
    pid = os.fork()
    if pid == 0:
        with ci.scope("in_child"):
            ci.mark("who", "child")
        ci.shutdown()
        os._exit(0)
    os.waitpid(pid, 0)
    ci.mark("who", "parent")
print(parent_scope.span_id)
"""
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 0, r.stderr
    parent_scope = r.stdout.strip().splitlines()[-1]
    batches = load_batches(tmp_path / ".cirron")
    spans = spans_by_name(batches)
    (child_span,) = spans["in_child"]
    assert child_span["parent_id"] == parent_scope
    assert child_span["pid"] != spans["before_fork"][0]["pid"]
    marks = {m["value"]: m for m in all_marks(batches) if m["name"] == "who"}
    assert marks["child"]["span_id"] == child_span["id"]
    assert marks["parent"]["span_id"] == parent_scope
    ids = [s["id"] for b in batches for s in b["spans"] if not s["attrs"].get("open")]
    assert len(ids) == len(set(ids))  # the child's ids never collide with the parent's


FAULT = """
import sys, time, os, json
sys.path.insert(0, {repo!r})
import cirron as ci
ci.profile(frameworks=[], flush_interval=3600)
def phase(n, k):
    for i in range(n):
        ci.mark(k, i)
    ci.flush()
phase(10, "before")
{fault}
phase(10, "during")
{restore}
phase(10, "after")
h = ci.health()
print(json.dumps(h, default=str))
"""


def fault_run(tmp_path: Path, fault: str, restore: str = "") -> tuple[dict, list[dict]]:
    from tests.helpers.run import REPO

    r = run_py(FAULT.format(repo=str(REPO), fault=fault, restore=restore), tmp_path)
    assert r.returncode == 0, r.stderr
    health = json.loads(r.stdout.strip().splitlines()[-1])
    return health, load_batches(tmp_path / ".cirron")


def test_spool_directory_deleted_mid_run_is_recreated(tmp_path: Path) -> None:
    health, batches = fault_run(tmp_path, "import shutil; shutil.rmtree('.cirron')")
    assert health["spool_recreated"] >= 1 and health["drops"]["spool_write_failures"] == 0
    names = {m["name"] for m in all_marks(batches)}
    assert names == {"during", "after"}  # "before" went with the deleted directory


def test_unwritable_spool_directory_is_counted_not_raised(tmp_path: Path) -> None:
    # A regular file where the spool directory should be: unwritable even for root.
    fault = "import shutil; shutil.rmtree('.cirron/spool'); open('.cirron/spool', 'w').close()"
    restore = "os.unlink('.cirron/spool'); os.mkdir('.cirron/spool')"
    health, batches = fault_run(tmp_path, fault, restore)
    assert health["drops"]["spool_write_failures"] == 1
    assert health["drops"]["records_unwritten"] == 10
    assert {m["name"] for m in all_marks(batches)} == {"after"}


def test_full_disk_is_counted_exactly_and_the_loop_keeps_running(tmp_path: Path) -> None:
    fault = (
        "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))"
    )
    restore = (
        "resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, "
        "resource.RLIM_INFINITY))"
    )
    health, batches = fault_run(tmp_path, fault, restore)
    d = health["drops"]
    assert d["spool_write_failures"] == 1 and d["records_unwritten"] == 10
    assert "file size limit" in health["spool_last_error"]
    names = [m["name"] for m in all_marks(batches)]
    assert names.count("before") == 10 and names.count("after") == 10
    assert "during" not in names
