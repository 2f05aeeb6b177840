"""The http transport against a real HTTP server on 127.0.0.1, with faults.

Every test writes real spool files, runs the real sender thread against
``tests/helpers/ingest_server.py`` and asserts on what the server received.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cirron.core.errors import CirronConfigError
from cirron.core.ledger import Ledger
from cirron.core.transport import (
    EventStreamTransport,
    FileOnlyTransport,
    HttpTransport,
    select_transport,
)
from cirron.core.transport_http import (
    RetryPolicy,
    encode_body,
    parse_retry_after,
    split_batch,
    split_id,
)
from tests.helpers.ingest_server import (
    INGEST_PATH,
    IngestServer,
    make_batch,
    running_server,
    write_batch,
    write_batches,
)
from tests.helpers.schema import validate_batch

KEY = "test-key-s3cr3t"
FAST = RetryPolicy(base=0.01, cap=0.05, retry_after_cap=60.0, connect_timeout=1.0, read_timeout=0.3)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> Iterator[IngestServer]:
    with running_server(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "work" / ".cirron" / "spool"
    path.mkdir(parents=True)
    return path


def http(
    server: IngestServer, spool: Path, policy: RetryPolicy = FAST, key: str = KEY
) -> HttpTransport:
    return HttpTransport(
        api_key=key,
        api_endpoint=server.url,
        ingest_path=INGEST_PATH,
        spool_dir=spool,
        sdk_version="0.0.0-test",
        policy=policy,
    )


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def posts(server: IngestServer) -> list[Any]:
    return [r for r in server.requests if r.method == "POST"]


# -- selection and the endpoint rule -----------------------------------------------------------


def select(spool: Path, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "api_key": None,
        "api_endpoint": "https://api.cirron.dev",
        "ingest_path": INGEST_PATH,
        "run_id": None,
        "spool_dir": spool,
        "sdk_version": "0.0.0-test",
    }
    return select_transport(**{**args, **kw})


def test_selection_prefers_run_id_then_api_key_then_file_only(spool: Path) -> None:
    assert isinstance(select(spool, run_id="r1", api_key=KEY), EventStreamTransport)
    assert isinstance(select(spool, api_key=KEY), HttpTransport)
    assert isinstance(select(spool), FileOnlyTransport)
    for name in ("event_stream", "http", "file_only"):
        kw = {"event_stream": {"run_id": "r"}, "http": {"api_key": KEY}, "file_only": {}}[name]
        health = select(spool, **kw).health()
        assert health["transport"] == name
        assert set(health) >= {
            "batches_sent",
            "batches_retried",
            "batches_failed",
            "batches_pending",
            "last_http_status",
            "last_error",
            "paused",
        }


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://api.cirron.dev",
        "http://127.0.0.1:9",
        "http://127.8.0.1",
        "http://[::1]:80",
        "http://localhost:1",
    ],
)
def test_https_anywhere_and_plain_http_to_loopback_are_accepted(spool: Path, endpoint: str) -> None:
    assert select(spool, api_key=KEY, api_endpoint=endpoint).name == "http"


@pytest.mark.parametrize(
    "endpoint",
    ["http://api.cirron.dev", "http://10.0.0.1:8080", "ftp://x", "http://user:pw@example.com"],
)
def test_plain_http_to_a_remote_host_is_refused_naming_the_endpoint_not_the_key(
    spool: Path, endpoint: str
) -> None:
    with pytest.raises(CirronConfigError) as info:
        select(spool, api_key=KEY, api_endpoint=endpoint)
    message = str(info.value)
    assert KEY not in message and "pw" not in message
    assert endpoint.split("@")[-1].split("://")[-1].split(":")[0] in message


# -- delivery despite faults -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    ["500", "503", "502", "504", "429", "hang", "reset", "blip-during-put"],
)
def test_every_batch_arrives_exactly_once_despite_a_fault(
    server: IngestServer, spool: Path, fault: str
) -> None:
    if fault == "hang":
        server.hang(times=2)
    elif fault == "reset":
        server.reset(times=3)
    elif fault == "429":
        server.fail(429, times=2, retry_after=0)
    elif fault == "blip-during-put":
        server.fail(503, times=2, method="PUT")
    else:
        server.fail(int(fault), times=3)
    blob = spool.parent / "snapshots" / ("ab" * 16) / "weights.safetensors"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\x00" * 64)
    left_behind = write_batches(spool, 4)
    transport = http(server, spool)
    transport.start()
    live = [
        make_batch(snapshots=1, blob_uri=blob.as_uri(), snapshot_span="ab" * 16) for _ in range(4)
    ]
    for batch in live:
        transport.on_batch(write_batch(spool, batch), batch)
    expected = {b["batch_id"] for b in left_behind + live}
    assert server.wait_for(len(expected), timeout=15)
    transport.close(5.0)
    assert set(server.batches) == expected
    health = transport.health()
    assert health["batches_sent"] == len(expected) and health["batches_pending"] == 0
    assert health["batches_retried"] >= 1 and health["batches_failed"] == 0
    assert Ledger(spool).sent_ids() == expected
    for batch in server.batches.values():
        validate_batch(batch)


def test_retry_after_is_honoured(server: IngestServer, spool: Path) -> None:
    server.fail(429, times=1, retry_after=1)
    write_batches(spool, 1)
    transport = http(server, spool)
    transport.start()
    assert server.wait_for(1, timeout=5)
    transport.close(1.0)
    first, second = posts(server)[:2]
    assert first.status == 429 and second.status == 202
    assert second.at - first.at >= 0.95


def test_a_server_that_goes_down_and_comes_back_gets_every_batch(
    server: IngestServer, spool: Path
) -> None:
    server.stop()
    transport = http(server, spool)
    transport.start()
    batches = []
    for _ in range(3):
        batch = make_batch()
        transport.on_batch(write_batch(spool, batch), batch)
        batches.append(batch)
    time.sleep(0.3)
    assert transport.health()["batches_retried"] >= 1
    assert transport.health()["batches_pending"] == 3
    server.start()
    assert server.wait_for(3, timeout=10)
    transport.close(2.0)
    assert set(server.batches) == {b["batch_id"] for b in batches}


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_not_retried_counted_failed_kept_and_logged_once(
    server: IngestServer, spool: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(status, times=2, method="POST")
    batches = write_batches(spool, 3)
    transport = http(server, spool)
    with caplog.at_level(logging.WARNING, logger="cirron"):
        transport.start()
        assert server.wait_for(1, timeout=5)
        assert wait_until(lambda: transport.health()["batches_pending"] == 0)
        transport.close(1.0)
    assert [r.status for r in posts(server)] == [status, status, 202]
    health = transport.health()
    assert health["batches_failed"] == 2 and health["batches_sent"] == 1
    assert health["batches_retried"] == 0 and health["last_http_status"] == 202
    assert all((spool / f"{b['created_ns']:020d}-{b['batch_id']}.json").exists() for b in batches)
    assert Ledger(spool).sent_ids() == {batches[2]["batch_id"]}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(status) in warnings[0].getMessage()


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_pauses_uploads_and_warns_once_without_the_key(
    spool: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server(api_key="the-right-key") as server:
        if status == 403:
            server.fail(403, times=10)
        write_batches(spool, 3)
        transport = http(server, spool, key=KEY)
        with caplog.at_level(logging.DEBUG):
            transport.start()
            assert wait_until(lambda: transport.health()["paused"])
            more = make_batch()
            transport.on_batch(write_batch(spool, more), more)
            time.sleep(0.2)
            transport.close(0.5)
        assert len(server.requests) == 1 and server.requests[0].status == status
    assert transport.health()["batches_pending"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "CIRRON_API_KEY" in warnings[0]
    assert KEY not in caplog.text and Ledger(spool).sent_ids() == frozenset()


def test_413_splits_the_batch_once_into_two_valid_halves_with_derived_ids(
    server: IngestServer, spool: Path
) -> None:
    batch = make_batch(spans=6, marks=20, pad=4000)
    halves = split_batch(batch)
    assert halves is not None
    sizes = [len(encode_body(h)[0]) for h in halves]
    server.max_body = max(sizes)
    assert len(encode_body(batch)[0]) > server.max_body
    write_batch(spool, batch)
    transport = http(server, spool)
    transport.start()
    assert server.wait_for(2, timeout=5)
    transport.close(1.0)
    ids = [split_id(batch["batch_id"], 0), split_id(batch["batch_id"], 1)]
    assert set(server.batches) == set(ids)
    got = [server.batches[i] for i in ids]
    for key in ("spans", "marks", "snapshots"):
        assert got[0][key] + got[1][key] == batch[key]
    assert all(g["split_of"] == batch["batch_id"] for g in got)
    assert Ledger(spool).sent_ids() == {batch["batch_id"], *ids}
    assert transport.health()["batches_sent"] == 1


def test_a_batch_still_too_large_after_one_split_is_failed_and_kept(
    server: IngestServer, spool: Path
) -> None:
    server.max_body = 10
    path = write_batch(spool, make_batch())
    transport = http(server, spool)
    transport.start()
    assert wait_until(lambda: transport.health()["batches_failed"] == 1)
    transport.close(0.5)
    assert [r.status for r in posts(server)] == [413, 413]
    assert path.exists()


def test_bodies_above_1_kb_are_gzipped_and_small_ones_are_not(
    server: IngestServer, spool: Path
) -> None:
    small, big = make_batch(spans=1, marks=0), make_batch(spans=20, marks=40)
    assert len(json.dumps(small)) < 1024 < len(json.dumps(big))
    write_batch(spool, small)
    write_batch(spool, big)
    transport = http(server, spool)
    transport.start()
    assert server.wait_for(2)
    transport.close(1.0)
    by_id = {r.batch_id: r for r in posts(server)}
    assert by_id[small["batch_id"]].headers["Content-Encoding"] == "identity"
    assert by_id[big["batch_id"]].headers["Content-Encoding"] == "gzip"
    for request in by_id.values():
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Cirron-SDK-Version"] == "0.0.0-test"
        assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert server.batches[big["batch_id"]] == big


def test_blobs_are_put_before_the_batch_and_blob_uri_is_rewritten(
    server: IngestServer, spool: Path
) -> None:
    span = "cd" * 16
    folder = spool.parent / "snapshots" / span
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"W" * 100)
    (folder / "gradients.safetensors").write_bytes(b"G" * 50)
    batch = make_batch(
        snapshots=2, blob_uri=(folder / "weights.safetensors").as_uri(), snapshot_span=span
    )
    batch["snapshots"][1]["blob_uri"] = (folder / "gradients.safetensors").as_uri()
    path = write_batch(spool, batch)
    transport = http(server, spool)
    transport.start()
    transport.on_blob(folder / "weights.safetensors", span)
    assert server.wait_for(1)
    transport.close(1.0)
    methods = [(r.method, r.path) for r in server.requests]
    assert methods == [
        ("PUT", f"{INGEST_PATH}/blobs/snapshots/{span}/weights.safetensors"),
        ("PUT", f"{INGEST_PATH}/blobs/snapshots/{span}/gradients.safetensors"),
        ("POST", INGEST_PATH),
    ]
    put = server.requests[0]
    assert put.headers["Content-Type"] == "application/octet-stream"
    assert server.blobs == {
        f"{span}/weights.safetensors": b"W" * 100,
        f"{span}/gradients.safetensors": b"G" * 50,
    }
    uploaded = server.batches[batch["batch_id"]]["snapshots"]
    assert [s["blob_uri"] for s in uploaded] == [
        f"https://blobs.test/{span}/weights.safetensors",
        f"https://blobs.test/{span}/gradients.safetensors",
    ]
    assert json.loads(path.read_text())["snapshots"][0]["blob_uri"].startswith("file://")


def test_the_key_never_appears_in_logs_reprs_health_or_errors(
    server: IngestServer, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail(500, times=1)
    server.reset(times=1)
    server.fail(422, times=1)
    write_batches(spool, 3)
    transport = http(server, spool)
    with caplog.at_level(logging.DEBUG):
        transport.start()
        assert server.wait_for(2)
        transport.close(1.0)
    assert caplog.records  # urllib3 and cirron did log something
    texts = [caplog.text, repr(transport), repr(transport._uploader), str(transport.health())]
    texts += [repr(v) for v in vars(transport).values()]
    texts += [repr(v) for v in vars(transport._uploader).values()]
    texts += [repr(v) for v in vars(transport._uploader._session).values()]
    assert not [t for t in texts if KEY in t]
    assert all(KEY not in p.read_text() for p in spool.iterdir())


# -- exit, replay, flush -----------------------------------------------------------------------


def test_close_with_a_hanging_server_returns_within_its_timeout(
    server: IngestServer, spool: Path
) -> None:
    server.hang(times=100)
    write_batches(spool, 3)
    transport = http(server, spool, policy=RetryPolicy())  # default 10 s read timeout
    transport.start()
    assert wait_until(lambda: len(server.requests) == 1)
    start = time.monotonic()
    transport.close(1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, elapsed
    assert transport.health()["batches_pending"] == 3
    transport.close(1.0)  # idempotent


def test_close_before_start_and_twice_is_harmless(spool: Path) -> None:
    transport = select(spool, api_key=KEY, api_endpoint="http://127.0.0.1:9")
    transport.close(0.1)
    transport.close(0.1)
    transport.start()  # after close: stays closed
    assert transport.health()["batches_sent"] == 0


_EXIT_SCRIPT = """
import atexit, sys, time
from pathlib import Path
from cirron.core.transport import select_transport
sys.path.insert(0, {repo!r})
from tests.helpers.ingest_server import make_batch, write_batch
spool = Path({spool!r})
t = select_transport(api_key={key!r}, api_endpoint={url!r}, ingest_path="/api/traces",
                     run_id=None, spool_dir=spool, sdk_version="0.0.0-test")
t.start()
for _ in range(3):
    b = make_batch()
    t.on_batch(write_batch(spool, b), b)
def _close():
    print("closing", time.time(), flush=True)
    t.close({exit_timeout})
atexit.register(_close)
time.sleep(0.3)  # the training loop ends while the upload hangs
"""


def test_a_process_whose_upload_hangs_exits_within_exit_timeout(
    server: IngestServer, spool: Path
) -> None:
    server.hang(times=100)
    exit_timeout = 1.0
    script = _EXIT_SCRIPT.format(
        repo=str(REPO), spool=str(spool), key=KEY, url=server.url, exit_timeout=exit_timeout
    )
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    closing_at = float(proc.stdout.split()[1])
    assert ended - closing_at <= exit_timeout + 0.5, (ended - closing_at, ended - started)
    assert len(server.requests) >= 1 and not server.batches
    assert len(list(spool.glob("*.json"))) == 3


def test_batches_left_behind_reach_the_server_through_the_next_start(
    server: IngestServer, spool: Path
) -> None:
    server.stop()
    first = http(server, spool)
    first.start()
    batches = [make_batch() for _ in range(3)]
    for batch in batches:
        first.on_batch(write_batch(spool, batch), batch)
    first.close(0.2)
    assert first.health()["batches_pending"] == 3
    already = make_batch()
    write_batch(spool, already)
    Ledger(spool).mark_sent(already["batch_id"])  # sent by an earlier run: not sent again
    server.start()
    second = http(server, spool)
    second.start()
    assert server.wait_for(3)
    second.close(1.0)
    assert set(server.batches) == {b["batch_id"] for b in batches}
    assert len(posts(server)) == 3


def test_batches_handed_over_without_a_spool_file_are_sent_from_memory(
    server: IngestServer, spool: Path
) -> None:
    transport = http(server, spool)
    transport.start()
    batch = make_batch()
    transport.on_batch(None, batch)
    assert server.wait_for(1)
    transport.close(1.0)
    assert server.batches == {batch["batch_id"]: batch}


def test_a_file_evicted_before_upload_is_skipped(server: IngestServer, spool: Path) -> None:
    server.stop()
    transport = http(server, spool)
    gone, kept = make_batch(created_ns=1), make_batch(created_ns=2)
    transport.on_batch(write_batch(spool, gone), gone)
    transport.on_batch(write_batch(spool, kept), kept)
    next(spool.glob(f"*{gone['batch_id']}.json")).unlink()
    server.start()
    transport.start()
    assert server.wait_for(1)
    assert wait_until(lambda: transport.health()["batches_pending"] == 0)
    transport.close(1.0)
    assert set(server.batches) == {kept["batch_id"]}
    assert transport.health()["batches_failed"] == 0


def test_a_corrupt_spool_file_is_counted_failed_and_the_rest_is_sent(
    server: IngestServer, spool: Path
) -> None:
    (spool / f"{1:020d}-{'e' * 32}.json").write_text('{"schema_version": 1, "spans": [')
    batch = write_batches(spool, 1)[0]
    transport = http(server, spool)
    transport.start()
    assert server.wait_for(1)
    assert wait_until(lambda: transport.health()["batches_pending"] == 0)
    transport.close(1.0)
    assert set(server.batches) == {batch["batch_id"]}
    assert transport.health()["batches_failed"] == 1
    (spool / f"{1:020d}-{'e' * 32}.json").unlink()  # keep the suite's schema check happy


def test_on_batch_returns_in_microseconds_while_the_server_hangs(
    server: IngestServer, spool: Path
) -> None:
    server.hang(times=100)
    transport = http(server, spool)
    transport.start()
    batch = make_batch()
    path = write_batch(spool, batch)
    transport.on_batch(path, batch)
    assert wait_until(lambda: len(server.requests) == 1)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        transport.on_batch(path, batch)
        times.append(time.perf_counter() - t0)
    transport.close(0.1)
    assert sorted(times)[100] < 50e-6


# -- pieces ------------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_retry_after_is_capped() -> None:
    top = RetryPolicy(base=0.5, cap=30.0, rng=lambda: 1.0)
    assert [top.delay(n, None) for n in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 4.0, 30.0]
    assert RetryPolicy(rng=lambda: 0.0).delay(5, None) == 0.0
    assert top.delay(1, 3600.0) == 60.0
    assert top.delay(1, 2.0) == 2.0


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_split_ids_are_deterministic_and_halves_validate() -> None:
    batch = make_batch(spans=1, marks=1)
    halves = split_batch(batch)
    assert halves is not None and halves == split_batch(batch)
    for half in halves:
        validate_batch(half)
    assert split_batch(make_batch(spans=1, marks=0)) is None


def test_gzip_body_round_trips() -> None:
    batch = make_batch(marks=50)
    body, encoding = encode_body(batch)
    assert encoding == "gzip" and json.loads(gzip.decompress(body)) == batch


def test_the_ledger_survives_torn_lines_and_concurrent_appends(spool: Path) -> None:
    import threading

    ledger = Ledger(spool)
    (spool / ".sent").write_bytes(b"0123")  # a line torn by a crash
    ids = [f"{i:032x}" for i in range(200)]
    threads = [
        threading.Thread(target=lambda c=chunk: [ledger.mark_sent(i) for i in c])
        for chunk in (ids[::2], ids[1::2])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Ledger(spool).sent_ids() == set(ids)
    ledger.compact(ids[:10])
    assert Ledger(spool).sent_ids() == set(ids[:10])
    with pytest.raises(ValueError):
        ledger.mark_sent("not-an-id")


def test_the_ca_bundle_follows_ssl_cert_file_and_never_disables_verification(
    monkeypatch: pytest.MonkeyPatch, spool: Path
) -> None:
    from cirron.core.transport_http import _ca_bundle

    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert _ca_bundle() is True
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/custom.pem")
    assert _ca_bundle() == "/etc/ssl/custom.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/other.pem")
    assert _ca_bundle() is True  # requests reads REQUESTS_CA_BUNDLE itself


def test_an_https_proxy_variable_is_honoured(
    server: IngestServer, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake server stands in as the proxy: requests sends it the absolute URL."""
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    write_batches(spool, 1)
    transport = HttpTransport(
        api_key=KEY,
        api_endpoint="http://localhost:9",  # nothing listens there: only the proxy can answer
        ingest_path=INGEST_PATH,
        spool_dir=spool,
        sdk_version="0.0.0-test",
        policy=FAST,
    )
    transport.start()
    assert wait_until(lambda: len(server.requests) >= 1, timeout=5)
    transport.close(0.5)
    assert server.requests[0].path.startswith("http://localhost:9")


def test_a_forked_child_uploads_with_its_own_thread_and_connections(
    server: IngestServer, spool: Path
) -> None:
    import os

    transport = http(server, spool)
    transport.start()
    parent_batch = make_batch()
    transport.on_batch(write_batch(spool, parent_batch), parent_batch)
    assert server.wait_for(1)
    child_batch = make_batch()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            transport.after_fork_in_child()
            transport.start()
            transport.on_batch(write_batch(spool, child_batch), child_batch)
            transport.close(5.0)
            code = 0 if transport.health()["batches_sent"] >= 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    transport.close(1.0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert set(server.batches) == {parent_batch["batch_id"], child_batch["batch_id"]}
