"""A fake Cirron ingest server: real HTTP on 127.0.0.1, no mocks, with a fault plan.

It speaks the platform protocol the http transport targets:

- ``POST {ingest_path}``: the body (gunzipped when ``Content-Encoding: gzip``) must validate
  against ``cirron/schema/spool-batch-v1.schema.json`` (else 422); ``Authorization: Bearer`` must
  carry the configured key (else 401); batches are de-duplicated by ``X-Cirron-Batch-Id`` and
  answered 202 ``{"batch_id": ..., "duplicate": bool}``.
- ``PUT {ingest_path}/blobs/snapshots/<span_id>/<file>``: stores the bytes, answers 201
  ``{"location": "https://blobs.test/<span_id>/<file>"}``.

Faults are queued per test and consumed one request at a time::

    server.fail(503, times=2, retry_after=1)
    server.hang(times=1)           # read the request, never answer
    server.reset(times=1)          # close the socket with RST
    server.max_body = 4096         # 413 for bodies above this many bytes
    server.stop(); server.start()  # go down and come back on the same port

Every request is recorded in ``server.requests``. Everything is bounded in time: a hung handler
waits at most ``hang_seconds`` and is released by ``stop()``.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers.schema import validator

INGEST_PATH = "/api/traces"
BLOB_PREFIX = INGEST_PATH + "/blobs/snapshots/"


@dataclass
class Fault:
    kind: str  # "status" | "hang" | "reset"
    status: int = 0
    retry_after: str | None = None
    method: str | None = None  # only requests with this method consume the fault


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    at: float
    status: int | None = None  # None: hung or reset
    batch_id: str | None = None
    fault: str | None = None


@dataclass
class _State:
    api_key: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    blobs: dict[str, bytes] = field(default_factory=dict)
    max_body: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class IngestServer:
    """Start with ``start()`` (or use :func:`running_server`); ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, api_key: str = "test-key-s3cr3t", hang_seconds: float = 20.0) -> None:
        self.state = _State(api_key=api_key)
        self.hang_seconds = hang_seconds
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> IngestServer:
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._release = threading.Event()
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler, bind_and_activate=False)
        httpd.allow_reuse_address = True
        httpd.daemon_threads = True
        httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        httpd.server_bind()
        httpd.server_activate()
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down: refuse connections until ``start()`` again (same port)."""
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- fault plan ----------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        times: int = 1,
        retry_after: float | str | None = None,
        method: str | None = None,
    ) -> None:
        ra = None if retry_after is None else str(retry_after)
        self._add(Fault("status", status, ra, method), times)

    def hang(self, times: int = 1, method: str | None = None) -> None:
        self._add(Fault("hang", method=method), times)

    def reset(self, times: int = 1, method: str | None = None) -> None:
        self._add(Fault("reset", method=method), times)

    @property
    def max_body(self) -> int | None:
        return self.state.max_body

    @max_body.setter
    def max_body(self, value: int | None) -> None:
        self.state.max_body = value

    def _add(self, fault: Fault, times: int) -> None:
        with self.state.lock:
            self.state.faults.extend([fault] * times)

    def _take_fault(self, method: str) -> Fault | None:
        with self.state.lock:
            for i, fault in enumerate(self.state.faults):
                if fault.method in (None, method):
                    return self.state.faults.pop(i)
        return None

    # -- what arrived --------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def batches(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            return dict(self.state.batches)

    @property
    def blobs(self) -> dict[str, bytes]:
        with self.state.lock:
            return dict(self.state.blobs)

    def wait_for(self, n_batches: int, timeout: float = 10.0) -> bool:
        """Wait until ``n_batches`` distinct batches arrived."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.batches) >= n_batches:
                return True
            time.sleep(0.01)
        return len(self.batches) >= n_batches


class _Handler(BaseHTTPRequestHandler):
    server_ref: IngestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        srv = self.server_ref
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        record = Request(self.command, self.path, dict(self.headers), len(body), time.monotonic())
        record.batch_id = self.headers.get("X-Cirron-Batch-Id")
        with srv.state.lock:
            srv.state.requests.append(record)
        fault = srv._take_fault(self.command)
        if fault is not None and fault.kind == "hang":
            record.fault = "hang"
            srv._release.wait(srv.hang_seconds)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "reset":
            record.fault = "reset"
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None:
            record.fault = str(fault.status)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._reply(record, fault.status, {"error": "injected fault"}, headers)
            return
        self._reply(record, *self._route(body))

    def _route(self, body: bytes) -> tuple[int, dict[str, Any]]:
        srv = self.server_ref
        if self.headers.get("Authorization") != f"Bearer {srv.state.api_key}":
            return 401, {"error": "bad api key"}
        if srv.state.max_body is not None and len(body) > srv.state.max_body:
            return 413, {"error": "payload too large"}
        if self.command == "PUT" and self.path.startswith(BLOB_PREFIX):
            name = self.path[len(BLOB_PREFIX) :]
            with srv.state.lock:
                srv.state.blobs[name] = body
            return 201, {"location": f"https://blobs.test/{name}"}
        if self.command != "POST" or self.path != INGEST_PATH:
            return 404, {"error": f"no route {self.command} {self.path}"}
        return self._ingest(body)

    def _ingest(self, body: bytes) -> tuple[int, dict[str, Any]]:
        srv = self.server_ref
        try:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            batch = json.loads(body)
        except (OSError, ValueError) as exc:
            return 400, {"error": f"unreadable body: {exc}"}
        errors = [e.message for e in validator().iter_errors(batch)]
        if errors:
            return 422, {"error": errors[:3]}
        batch_id = self.headers.get("X-Cirron-Batch-Id")
        if batch_id != batch["batch_id"]:
            return 400, {"error": "X-Cirron-Batch-Id does not match the body"}
        with srv.state.lock:
            duplicate = batch_id in srv.state.batches
            srv.state.duplicates += duplicate
            srv.state.batches.setdefault(batch_id, batch)
        return 202, {"batch_id": batch_id, "duplicate": duplicate}

    def _reply(
        self,
        record: Request,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        record.status = status
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def running_server(**kwargs: Any) -> Iterator[IngestServer]:
    """An :class:`IngestServer` that is always stopped afterwards."""
    server = IngestServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


# -- synthetic spool batches -------------------------------------------------------------------


def hex_id() -> str:
    return os.urandom(16).hex()


def make_batch(
    *,
    spans: int = 2,
    marks: int = 3,
    snapshots: int = 0,
    blob_uri: str | None = None,
    snapshot_span: str | None = None,
    created_ns: int | None = None,
    pad: int = 0,
) -> dict[str, Any]:
    """A batch valid per the v1 schema; ``pad`` adds that many random hex chars of attrs."""
    now = time.time_ns() if created_ns is None else created_ns
    span_ids = [hex_id() for _ in range(spans)]
    span_list = [
        {
            "id": sid,
            "name": "batch" if i else "epoch",
            "parent_id": span_ids[0] if i else None,
            "index": i,
            "start_ns": max(0, now - 1000 + i),
            "end_ns": now,
            "cpu_ns": None,
            "gpu_ns": None,
            "memory_peak_bytes": None,
            "thread_id": 1,
            "pid": os.getpid(),
            "rank": 0,
            "attrs": {"pad": os.urandom(pad // 2).hex()} if pad and i == 0 else {},
            "mark_ids": [],
        }
        for i, sid in enumerate(span_ids)
    ]
    mark_list = [
        {
            "id": hex_id(),
            "span_id": span_ids[0] if span_ids else "root",
            "name": "loss",
            "value_type": "float",
            "value": 1.0 / (i + 1),
            "attrs": {},
            "ts_ns": now,
            "kind": "point",
        }
        for i in range(marks)
    ]
    snap_span = snapshot_span or (span_ids[0] if span_ids else hex_id())
    snap_list = [
        {
            "id": hex_id(),
            "span_id": snap_span,
            "tensor_name": f"layer{i}.weight",
            "shape": [4, 4],
            "dtype": "float32",
            "mode": "sampled" if blob_uri else "stats",
            "stats": {
                "mean": 0.0,
                "std": 1.0,
                "min": -1.0,
                "max": 1.0,
                "norm": 4.0,
                "histogram": {"bins": [i / 16 for i in range(17)], "counts": [1] * 16},
            },
            "blob_uri": blob_uri,
            "ts_ns": now,
            "attrs": {},
        }
        for i in range(snapshots)
    ]
    return {
        "schema_version": 1,
        "sdk_version": "0.0.0-test",
        "batch_id": hex_id(),
        "created_ns": now,
        "spans": span_list,
        "marks": mark_list,
        "snapshots": snap_list,
    }


def batch_file_name(batch: dict[str, Any]) -> str:
    return f"{batch['created_ns']:020d}-{batch['batch_id']}.json"


def write_batch(spool_dir: Path, batch: dict[str, Any]) -> Path:
    """Write ``batch`` the way the runtime does: ``.json.tmp`` then ``os.replace``."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / batch_file_name(batch)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(batch))
    os.replace(tmp, path)
    return path


def write_batches(spool_dir: Path, n: int, **kwargs: Any) -> list[dict[str, Any]]:
    """``n`` batches with increasing ``created_ns``, oldest first."""
    base = time.time_ns()
    out = []
    for i in range(n):
        batch = make_batch(created_ns=base + i, **kwargs)
        write_batch(spool_dir, batch)
        out.append(batch)
    return out
