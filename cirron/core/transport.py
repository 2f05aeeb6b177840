"""How sealed spool batches leave the process: ``file_only``, ``http`` or ``event_stream``.

The runtime calls :func:`select_transport` once in ``profile()``, then ``start()``, then
``on_batch`` / ``on_blob`` from its flusher thread (each returns in microseconds: it only queues
work), and ``close(exit_timeout)`` at exit. Network and stdout work happens on the transport's own
daemon thread, so a slow or dead server never delays the spool or the training loop, and nothing
here raises into user code after ``select_transport`` has returned.

>>> import pathlib, tempfile
>>> t = select_transport(api_key=None, api_endpoint="https://api.cirron.dev",
...                      ingest_path="/api/traces", run_id=None,
...                      spool_dir=pathlib.Path(tempfile.mkdtemp()), sdk_version="0.1.0")
>>> t.name, t.health()["batches_sent"]
('file_only', 0)
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from cirron.core.errors import CirronConfigError
from cirron.core.ledger import Ledger
from cirron.core.transport_http import Outcome, RetryPolicy, Uploader
from cirron.core.transport_stream import EventStreamTransport, base_health, start_daemon

__all__ = [
    "BATCH_NAME",
    "EventStreamTransport",
    "FileOnlyTransport",
    "HttpTransport",
    "Transport",
    "check_endpoint",
    "select_transport",
]

logger = logging.getLogger("cirron")

BATCH_NAME = re.compile(r"^\d{20}-[0-9a-f]{32}\.json$")
_MAX_MEMORY_BATCHES = 1000  # batches held in memory when the spool sink is off


class Transport(Protocol):
    """What the runtime drives. Every method but ``select_transport`` never raises."""

    name: str

    def start(self) -> None: ...
    def on_batch(self, path: Path | None, batch: dict[str, Any]) -> None: ...
    def on_blob(self, path: Path, span_id: str) -> None: ...
    def close(self, timeout: float) -> None: ...
    def health(self) -> dict[str, Any]: ...


def select_transport(
    *,
    api_key: str | None,
    api_endpoint: str,
    ingest_path: str,
    run_id: str | None,
    spool_dir: Path,
    stdout: TextIO | None = None,
    sdk_version: str,
) -> Transport:
    """``run_id`` set: ``event_stream``; else an API key: ``http``; else ``file_only``.

    Raises :class:`CirronConfigError` for an endpoint the key must not travel to.
    """
    if run_id:
        return EventStreamTransport(stdout=stdout, sdk_version=sdk_version)
    if api_key:
        check_endpoint(api_endpoint)
        return HttpTransport(
            api_key=api_key,
            api_endpoint=api_endpoint,
            ingest_path=ingest_path,
            spool_dir=spool_dir,
            sdk_version=sdk_version,
        )
    return FileOnlyTransport()


def check_endpoint(api_endpoint: str) -> None:
    """Refuse any endpoint but https, or plain http to a loopback address.

    >>> check_endpoint("http://127.0.0.1:8080")
    >>> check_endpoint("http://example.com")
    Traceback (most recent call last):
    ...
    cirron.core.errors.CirronConfigError: api_endpoint 'http://example.com' ...
    """
    parts = urlsplit(api_endpoint)
    shown = parts._replace(netloc=parts.hostname or "").geturl()  # drop any user:password@
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise CirronConfigError(
        f"api_endpoint {shown!r} would send the API key without TLS: use https://, "
        "or plain http:// only to 127.0.0.1, ::1 or localhost",
        key="api_endpoint",
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FileOnlyTransport:
    """The spool is the only sink: every method is a no-op."""

    name = "file_only"

    def __repr__(self) -> str:
        return "FileOnlyTransport()"

    def start(self) -> None:
        """Nothing to start."""

    def on_batch(self, path: Path | None, batch: dict[str, Any]) -> None:
        """The batch is already in the spool."""

    def on_blob(self, path: Path, span_id: str) -> None:
        """The blob is already on disk."""

    def close(self, timeout: float) -> None:
        """Nothing to drain."""

    def health(self) -> dict[str, Any]:
        """The standard keys, all zero."""
        return base_health(self.name)


# -- http --------------------------------------------------------------------------------------


class _Item:
    """One pending batch: a spool file, or (spool sink off) the batch itself."""

    __slots__ = ("batch", "name", "path")

    def __init__(self, name: str, path: Path | None, batch: dict[str, Any] | None) -> None:
        self.name, self.path, self.batch = name, path, batch

    def __lt__(self, other: _Item) -> bool:
        return self.name < other.name


class HttpTransport:
    """Uploads pending spool batches oldest-first from its own sender thread.

    At ``start()`` the thread first replays every batch in ``spool_dir`` that the ledger does not
    list as sent (left behind by an earlier process), then follows ``on_batch``. A retryable
    failure holds the queue back by exponential backoff with full jitter (or ``Retry-After``);
    401/403 pause all uploads; other 4xx count the batch as failed and keep its file.
    """

    name = "http"

    def __init__(
        self,
        *,
        api_key: str,
        api_endpoint: str,
        ingest_path: str,
        spool_dir: Path,
        sdk_version: str,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.ledger = Ledger(self.spool_dir)
        self._uploader = Uploader(
            api_key=api_key,
            api_endpoint=api_endpoint,
            ingest_path=ingest_path,
            sdk_version=sdk_version,
            ledger=self.ledger,
            policy=policy,
        )
        self._policy = self._uploader.policy
        self._heap: list[_Item] = []
        self._queued: set[str] = set()
        self._in_memory = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = float("inf")
        self._retry_at = 0.0
        self._attempt = 0
        self._warned: set[int | str] = set()
        self._health = base_health(self.name)
        self._health.update(blobs_seen=0, batches_dropped=0)

    def __repr__(self) -> str:
        return (
            f"HttpTransport(url={self._uploader.url!r}, key=***, spool_dir={str(self.spool_dir)!r})"
        )

    def start(self) -> None:
        """Start the sender thread (once); it replays the spool before anything else."""
        with self._wake:
            if self._thread is not None or self._closing:
                return
            self._thread = start_daemon(self._run, "cirron-http-sender", self._health)

    def on_batch(self, path: Path | None, batch: dict[str, Any]) -> None:
        """Queue a sealed batch (by its file, or in memory when the spool sink is off)."""
        try:
            if path is not None:
                self._enqueue(_Item(path.name, path, None))
            else:
                name = f"{batch['created_ns']:020d}-{batch['batch_id']}.json"
                self._enqueue(_Item(name, None, batch))
        except (KeyError, TypeError, ValueError) as exc:
            self._health["last_error"] = f"malformed batch handed to the transport: {exc}"

    def on_blob(self, path: Path, span_id: str) -> None:
        """Blobs are uploaded just before the batch that cites them; this only counts them."""
        self._health["blobs_seen"] += 1

    def close(self, timeout: float) -> None:
        """Keep uploading for at most ``timeout`` seconds, then stop; the rest stays pending."""
        with self._wake:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + max(0.0, timeout)
                self._wake.notify_all()
            deadline, thread = self._deadline, self._thread
        if thread is None:
            self._uploader.close()
        elif thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))

    def health(self) -> dict[str, Any]:
        """Counters of this process's uploads."""
        return dict(self._health, batches_pending=len(self._heap))

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh lock, connections and queue; the parent keeps uploading
        what it had queued. Call ``start()`` again to upload from the child."""
        self._wake = threading.Condition()
        self._heap, self._queued, self._in_memory = [], set(), 0
        self._thread, self._closing, self._deadline = None, False, float("inf")
        self.ledger.after_fork_in_child()
        self._uploader.after_fork_in_child()

    # -- the sender thread -------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        with self._wake:
            if item.name in self._queued:
                return
            if item.batch is not None:
                if self._in_memory >= _MAX_MEMORY_BATCHES:
                    self._health["batches_dropped"] += 1
                    return
                self._in_memory += 1
            self._queued.add(item.name)
            heapq.heappush(self._heap, item)
            self._wake.notify()

    def _replay(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.spool_dir) if BATCH_NAME.match(n))
        except OSError:
            return
        sent = self.ledger.sent_ids()
        for name in names:
            if name[21:53] not in sent:
                self._enqueue(_Item(name, self.spool_dir / name, None))
        if len(sent) > 2 * len(names) + 1000:  # ids of long-evicted batches: forget them
            try:
                self.ledger.compact(name[21:53] for name in names)
            except OSError:
                pass

    def _run(self) -> None:
        try:
            self._replay()
            while (item := self._next()) is not None:
                self._handle(item, self._send(item))
        except Exception as exc:  # never let the thread die silently on a bug of ours
            self._health["last_error"] = f"sender stopped: {type(exc).__name__}: {exc}"
            logger.warning("cirron: the upload thread stopped on an internal error: %r", exc)
        finally:
            self._uploader.close()

    def _next(self) -> _Item | None:
        """The oldest pending batch once backoff allows; ``None`` when it is time to stop."""
        with self._wake:
            while True:
                now = time.monotonic()
                if self._closing and (now >= self._deadline or self._health["paused"]):
                    return None
                if self._closing and not self._heap:
                    return None
                if self._heap and not self._health["paused"] and now >= self._retry_at:
                    return self._heap[0]
                wake_at = self._deadline if self._closing else float("inf")
                if self._heap and not self._health["paused"]:
                    wake_at = min(wake_at, self._retry_at)
                self._wake.wait(None if wake_at == float("inf") else max(0.0, wake_at - now))

    def _send(self, item: _Item) -> Outcome:
        if item.path is not None:
            return self._uploader.upload_file(item.path)
        assert item.batch is not None
        return self._uploader.upload_batch(item.batch)

    def _handle(self, item: _Item, outcome: Outcome) -> None:
        health = self._health
        if outcome.status is not None:
            health["last_http_status"] = outcome.status
        if outcome.error:
            health["last_error"] = outcome.error
        health["batches_retried"] += max(0, outcome.attempts - 1)
        if outcome.kind == "retry":
            health["batches_retried"] += 1
            self._attempt += 1
            delay = self._policy.delay(self._attempt, outcome.retry_after)
            with self._wake:
                self._retry_at = time.monotonic() + delay
            return
        if outcome.kind == "paused":
            health["paused"] = True
            self._warn_once("auth", _AUTH_HINT.format(status=outcome.status))
            return
        self._attempt = 0
        if outcome.kind == "sent":
            health["batches_sent"] += 1
        elif outcome.kind == "failed":
            health["batches_failed"] += 1
            self._warn_once(
                outcome.status or "error", f"cirron: {outcome.error}; kept in the spool"
            )
        self._pop(item)

    def _pop(self, item: _Item) -> None:
        with self._wake:
            if self._heap and self._heap[0] is item:
                heapq.heappop(self._heap)
            elif item in self._heap:  # an older batch was queued while this one was in flight
                self._heap.remove(item)
                heapq.heapify(self._heap)
            if item.batch is not None:
                self._in_memory -= 1

    def _warn_once(self, key: int | str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


_AUTH_HINT = (
    "cirron: the platform refused the API key (HTTP {status}); uploads are paused and batches "
    "stay in the spool. Check CIRRON_API_KEY and that the key belongs to this workspace, then "
    "run `cirron spool flush`."
)
