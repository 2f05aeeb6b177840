"""End to end: ``cirron.profile()`` in a real process delivering through the real transports."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cirron.core.ledger import Ledger
from tests.helpers.ingest_server import IngestServer, running_server
from tests.helpers.schema import load_batches, validate_batch

KEY = "e2e-key-s3cr3t"
REPO = Path(__file__).resolve().parents[1]

TRAIN = """
import sys, time
import cirron as ci
ci.profile(frameworks=[], flush_interval=0.05)
for epoch in ci.epochs(range(2)):
    for step in ci.batches(range(20)):
        ci.mark("loss", 1.0 / (step + 1))
        print(f"step {epoch}.{step}", flush=True)
        time.sleep(0.005)
print("loop-done", time.time(), flush=True)
"""


@pytest.fixture
def server() -> Iterator[IngestServer]:
    with running_server(api_key=KEY) as srv:
        yield srv


def train(work: Path, env: dict[str, str], script: str = TRAIN) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=work,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def spool_ids(work: Path) -> set[str]:
    return {b["batch_id"] for b in load_batches(work / ".cirron")}


def test_a_run_with_an_api_key_delivers_every_spool_batch_once(
    server: IngestServer, _isolated: Path
) -> None:
    proc = train(_isolated, {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url})
    assert proc.returncode == 0, proc.stderr
    ids = spool_ids(_isolated)
    assert ids and set(server.batches) == ids
    assert Ledger(_isolated / ".cirron" / "spool").sent_ids() == ids
    assert KEY not in proc.stdout + proc.stderr
    names = {s["name"] for b in server.batches.values() for s in b["spans"]}
    assert {"cirron.session", "epoch", "batch"} <= names


def test_a_run_exits_within_exit_timeout_while_the_server_hangs(
    server: IngestServer, _isolated: Path
) -> None:
    server.hang(times=1000)
    env = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url, "CIRRON_EXIT_TIMEOUT": "1.0"}
    proc = train(_isolated, env)
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    loop_done = float(proc.stdout.split("loop-done")[1].split()[0])
    assert ended - loop_done <= 1.0 + 0.5, ended - loop_done
    assert not server.batches and spool_ids(_isolated)


def test_batches_left_behind_reach_the_server_through_the_next_run(
    server: IngestServer, _isolated: Path
) -> None:
    server.stop()
    env = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url, "CIRRON_EXIT_TIMEOUT": "0.5"}
    assert train(_isolated, env).returncode == 0
    first = spool_ids(_isolated)
    assert first and not Ledger(_isolated / ".cirron" / "spool").sent_ids()
    server.start()
    proc = train(_isolated, env)
    assert proc.returncode == 0, proc.stderr
    assert first < set(server.batches) == spool_ids(_isolated)


def test_a_run_inside_a_cirron_pipeline_streams_json_lines_on_stdout(_isolated: Path) -> None:
    proc = train(_isolated, {"CIRRON_RUN_ID": "run-1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    events = [json.loads(line) for line in lines if line.startswith('{"__cirron_event__"')]
    others = [line for line in lines if not line.startswith('{"__cirron_event__"')]
    assert events and all(e["__cirron_event__"] == "trace_batch" for e in events)
    for event in events:
        assert event["schema_version"] == 1
        validate_batch(event["payload"])
    assert {e["payload"]["batch_id"] for e in events} == spool_ids(_isolated)
    assert others == [f"step {e}.{s}" for e in range(2) for s in range(20)] + [others[-1]]


STEP_TIMES = """
import json, sys, time
import cirron as ci

def step_times():
    out = []
    for _ in ci.batches(range(400)):
        t0 = time.perf_counter()
        with ci.scope("work"):
            x = 0
            for i in range(2000):
                x += i * i
            ci.mark("x", x)
        out.append(time.perf_counter() - t0)
    return out

ci.profile(frameworks=[], flush_interval=0.02)
times = step_times()
print(json.dumps({"median": sorted(times)[len(times) // 2], "health": ci.health()}))
"""


def test_per_step_time_with_a_hanging_server_stays_within_noise(
    server: IngestServer, _isolated: Path
) -> None:
    server.hang(times=1000)
    hung = {"CIRRON_API_KEY": KEY, "CIRRON_API_ENDPOINT": server.url, "CIRRON_EXIT_TIMEOUT": "0.2"}
    medians: dict[str, list[float]] = {"none": [], "hung": []}
    for _ in range(3):  # interleaved, to share the machine's noise
        for label, env in (("none", {}), ("hung", hung)):
            proc = train(_isolated, env, STEP_TIMES)
            assert proc.returncode == 0, proc.stderr
            doc = json.loads(proc.stdout.splitlines()[-1])
            medians[label].append(doc["median"])
            if label == "hung":
                assert doc["health"].get("transport") == "http"
    base, hung_median = statistics.median(medians["none"]), statistics.median(medians["hung"])
    assert len(server.requests) >= 1
    assert hung_median <= base * 1.25 + 20e-6, (base, hung_median)
